"""A simulator of the OpenAI Images API (``docs/providers/openai.md``), on loopback.

Routes::

    POST /v1/images/generations   JSON: model, prompt, n, size "WxH" (or width/height in the
                                  together dialect), quality …; data[].b64_json and usage
    POST /v1/images/edits         multipart: image[] parts (image/png|jpeg|webp, ≤ 16)

Rules: ``Authorization: Bearer`` (401 ``invalid_api_key``), models of provider ``openai``
in the model table (404 ``model_not_found``; a row with a past ``shutdown`` too), sizes by
the table, ``moderation_blocked`` (400) for prompts containing ``MODERATE``, parts sent as
``application/octet-stream`` refused (400 ``unsupported_file_mimetype``). Usage: text tokens
one per four prompt characters, 65 image tokens per input, output tokens per image by
quality (low 272, medium 1056, high 4160 at 1024×1024, scaled by area); the ledger bills
them at the table's token prices. Knobs (``fail_next``, ``lose_answers``) as in
:mod:`.siblings`: e.g. ``[[429, "rate_limit_exceeded"]]`` or ``[[429, "insufficient_quota"]]``.
"""

from __future__ import annotations

import base64
import datetime
import email.parser
import email.policy
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from qwbatch.core.costs import token_cost
from qwbatch.core.model_table import MEGAPIXEL, ModelTable, parse_size
from qwbatch.simulator.siblings import SiblingState, control_routes, held_back, render_png

#: Output tokens of one 1024×1024 image by quality.
OUTPUT_TOKENS = {"low": 272, "medium": 1056, "high": 4160, "auto": 1056}
IMAGE_TOKENS_PER_INPUT = 65
_PART_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})


class OpenAISimulator:
    def __init__(self, api_key: str | None, table: ModelTable | None, dialect: str) -> None:
        self.state = SiblingState(api_key=api_key, table=table)
        self.dialect = dialect

    async def generations(self, request: Request) -> Response:
        if (denied := self._auth(request)) is not None:
            return denied
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "invalid_request_error", "invalid_json", "body is not JSON")
        return await self._serve(body, inputs=0)

    async def edits(self, request: Request) -> Response:
        if (denied := self._auth(request)) is not None:
            return denied
        body, parts = _multipart(request.headers.get("content-type", ""), await request.body())
        if not parts or len(parts) > 16:
            return _error(400, "invalid_request_error", "invalid_value", "1 to 16 image[] parts")
        for filename, content_type in parts:
            if content_type not in _PART_TYPES:
                return _error(
                    400,
                    "invalid_request_error",
                    "unsupported_file_mimetype",
                    f"Invalid file '{filename}': unsupported mimetype ('{content_type}')",
                )
        return await self._serve(body, inputs=len(parts))

    async def _serve(self, body: dict[str, Any], *, inputs: int) -> Response:
        if (injected := self.state.injected()) is not None:
            status, code = injected
            kind = "insufficient_quota" if code == "insufficient_quota" else "requests"
            return _error(status, kind, code, f"simulated {code or status}", retry_after_ms=50)
        table = self.state.table
        model = str(body.get("model") or "")
        spec = table.get(model) if model in table else None
        today = datetime.datetime.now(datetime.UTC).date().isoformat()
        if spec is None or spec.provider != "openai" or (spec.shutdown and spec.shutdown <= today):
            return _error(404, "invalid_request_error", "model_not_found", f"model {model!r}")
        prompt = str(body.get("prompt") or "")
        if not prompt:
            return _error(400, "invalid_request_error", "missing_required_parameter", "prompt")
        if self.dialect == "together":
            width, height = int(body.get("width") or 1024), int(body.get("height") or 1024)
        else:
            parsed = parse_size(str(body.get("size") or "1024x1024"))
            if parsed is None:
                return _error(400, "invalid_request_error", "invalid_value", "size")
            width, height = parsed
        problem = spec.size_problem(f"{width}*{height}")
        if problem:
            return _error(400, "invalid_request_error", "invalid_value", problem)
        if "MODERATE" in prompt:
            return _error(
                400,
                "image_generation_user_error",
                "moderation_blocked",
                "Your request was rejected by the safety system.",
            )
        n = int(body.get("n") or 1)
        quality = str(body.get("quality") or "auto")
        seed = int(body.get("seed") or 0)
        images = [await render_png(model, prompt, seed, index, width, height) for index in range(n)]
        text_tokens = max(1, len(prompt) // 4)
        image_tokens = IMAGE_TOKENS_PER_INPUT * inputs
        output_tokens = round(OUTPUT_TOKENS.get(quality, 1056) * width * height / MEGAPIXEL) * n
        cost = token_cost(spec, text_in=text_tokens, image_in=image_tokens, image_out=output_tokens)
        if self.dialect == "together":
            price = spec.pricing.per_image.get("any", 0.0)
            self.state.bill(model, prompt, n, price * n)
        else:
            self.state.bill(model, prompt, n, float(cost))
        await held_back(self.state)
        data = [
            {"index": i, "b64_json": base64.b64encode(png).decode(), "type": "image"}
            for i, png in enumerate(images)
        ]
        if self.dialect == "together":
            return JSONResponse(
                {"id": str(uuid.uuid4()), "model": model, "object": "list", "data": data}
            )
        return JSONResponse(
            {
                "created": 0,
                "data": [{"b64_json": item["b64_json"]} for item in data],
                "output_format": "png",
                "quality": quality,
                "size": f"{width}x{height}",
                "usage": {
                    "input_tokens": text_tokens + image_tokens,
                    "input_tokens_details": {
                        "text_tokens": text_tokens,
                        "image_tokens": image_tokens,
                    },
                    "output_tokens": output_tokens,
                    "total_tokens": text_tokens + image_tokens + output_tokens,
                },
            },
            headers={"x-request-id": f"req_{uuid.uuid4().hex[:16]}"},
        )

    def _auth(self, request: Request) -> Response | None:
        header = request.headers.get("authorization", "")
        key = header.removeprefix("Bearer ").strip()
        if not key or (self.state.api_key is not None and key != self.state.api_key):
            return _error(
                401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided"
            )
        return None


def create_openai_app(
    *, api_key: str | None = None, table: ModelTable | None = None, dialect: str = "openai"
) -> Starlette:
    """The OpenAI Images simulator as an ASGI app (``running(app=…)``); ``dialect`` "together"
    speaks the gateway shape (width/height, no usage)."""
    sim = OpenAISimulator(api_key, table, dialect)
    routes = [
        Route("/v1/images/generations", sim.generations, methods=["POST"]),
        Route("/v1/images/edits", sim.edits, methods=["POST"]),
        *control_routes(sim.state),
    ]
    app = Starlette(routes=routes)
    app.state.openai = sim
    return app


def _error(
    status: int, kind: str, code: str, message: str, *, retry_after_ms: int | None = None
) -> Response:
    headers = {"retry-after-ms": str(retry_after_ms)} if retry_after_ms and status == 429 else {}
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": None, "code": code}},
        status_code=status,
        headers=headers,
    )


def _multipart(content_type: str, raw: bytes) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """A multipart/form-data body: its text fields, and its ``image[]`` parts as
    (filename, content type). The stdlib's MIME parser: no form library needed."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw
    )
    fields: dict[str, str] = {}
    parts: list[tuple[str, str]] = []
    for part in message.iter_parts() if message.is_multipart() else ():
        name = part.get_param("name", header="content-disposition")
        if name == "image[]":
            parts.append((part.get_filename() or "", part.get_content_type()))
        elif isinstance(name, str):
            payload = part.get_payload(decode=True)
            fields[name] = payload.decode() if isinstance(payload, bytes) else ""
    return fields, parts
