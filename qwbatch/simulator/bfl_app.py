"""A simulator of BFL's FLUX API (``docs/providers/bfl.md``), on loopback for tests and demos.

Routes::

    POST /v1/{model}                 submit: {id, polling_url, cost, input_mp, output_mp}
    GET  /v1/get_result?id=…         {id, status, result: {sample}, progress, details}
    GET  /v1/credits                 {credits}
    GET  /delivery/{id}.png?exp=…    the sample, 403 once ``sample_ttl_s`` has passed

Rules as documented: ``x-key`` auth (401), 422 validation bodies (``detail`` list), widths and
heights multiples of 16 up to 4 MP, up to ``max_inputs`` input images, at most
``active_limit`` tasks not yet final per account (``kontext_max_limit`` for kontext-max;
429 beyond), 402 when credits run out. ``cost`` is quoted in credits by the model table's
formula; a moderated task is not charged (its credits come back). Prompts containing
``MODERATE_REQUEST`` / ``MODERATE_CONTENT`` end ``Request Moderated`` / ``Content Moderated``.
Tasks become Ready ``ready_after_s`` after submission; a task is forgotten (``Task not
found``) ``task_ttl_s`` after it ended.
"""

from __future__ import annotations

import base64
import binascii
import math
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from qwbatch.core.costs import usd_image_price
from qwbatch.core.model_table import MEGAPIXEL, ModelTable
from qwbatch.simulator.render import probe
from qwbatch.simulator.siblings import (
    SiblingState,
    control_routes,
    held_back,
    render_png,
)


@dataclass
class BflConfig:
    """The BFL simulator's rules (sizes and prices come from the model table)."""

    api_key: str | None = None
    credits: float = 1_000_000.0
    ready_after_s: float = 0.05
    sample_ttl_s: float = 600.0
    task_ttl_s: float = 3600.0
    active_limit: int = 24
    kontext_max_limit: int = 6


@dataclass
class _Task:
    id: str
    model: str
    prompt: str
    seed: int
    width: int
    height: int
    credits: float
    submitted: float
    outcome: str  # the final status it will reach
    ended: float | None = None
    image: bytes | None = None


class BflSimulator:
    def __init__(self, config: BflConfig, table: ModelTable | None = None) -> None:
        self.config = config
        self.state = SiblingState(api_key=config.api_key, table=table, on_reset=self.reset)
        self.tasks: dict[str, _Task] = {}
        self.credits = config.credits

    def reset(self) -> None:
        self.tasks.clear()
        self.credits = self.config.credits

    # -- routes --------------------------------------------------------------------------

    async def submit(self, request: Request) -> Response:
        model = request.path_params["model"]
        if (denied := self._auth(request)) is not None:
            return denied
        if (injected := self.state.injected()) is not None:
            return _error(*injected)
        table = self.state.table
        if model not in table or table.get(model).provider != "bfl":
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        spec = table.get(model)
        try:
            body = await request.json()
        except ValueError:
            return _invalid("body", "Input should be a valid JSON object")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            return _invalid("prompt", "Field required")
        inputs = [body[key] for key in _input_keys(spec.max_inputs + 1) if key in body]
        if len(inputs) > spec.max_inputs:
            return _invalid("input_image", f"at most {spec.max_inputs} input images")
        input_pixels = 0
        for position, image in enumerate(inputs, start=1):
            try:
                _, width, height = probe(base64.b64decode(image, validate=True))
            except (ValueError, binascii.Error):
                return _invalid(f"input_image_{position}", "not a base64 image")
            input_pixels += width * height
        width, height = self._size(spec.size_rule, body)
        if width % 16 or height % 16 or width * height > 4 * MEGAPIXEL:
            return _invalid("width", "width and height must be multiples of 16, at most 4 MP")
        active = sum(
            1 for t in self.tasks.values() if t.ended is None and self._same_limit(t, model)
        )
        if active >= self._limit(model):
            return JSONResponse(
                {"detail": f"Too many active tasks ({active}); wait for one to finish"},
                status_code=429,
                headers={"Retry-After": "1"},
            )
        price = usd_image_price(spec, f"{width}*{height}", inputs=0) or Decimal(0)
        if spec.pricing_rule == "megapixel":
            price += Decimal(input_pixels) / MEGAPIXEL * Decimal(str(spec.pricing.per_mp))
        credits = float(round(price * 100, 4))
        if credits > self.credits:
            return JSONResponse({"detail": "Insufficient credits"}, status_code=402)
        self.credits -= credits
        outcome = "Ready"
        if "MODERATE_REQUEST" in prompt:
            outcome = "Request Moderated"
        elif "MODERATE_CONTENT" in prompt:
            outcome = "Content Moderated"
        task = _Task(
            id=str(uuid.uuid4()),
            model=model,
            prompt=prompt,
            seed=int(body.get("seed") or 0),
            width=width,
            height=height,
            credits=credits,
            submitted=time.monotonic(),
            outcome=outcome,
        )
        self.tasks[task.id] = task
        if outcome == "Ready":
            self.state.bill(model, prompt, 1, credits / 100)
        else:
            self.credits += credits  # a moderated task is not charged
        await held_back(self.state)
        root = str(request.base_url).rstrip("/")
        return JSONResponse(
            {
                "id": task.id,
                "polling_url": f"{root}/v1/get_result?id={task.id}",
                "cost": credits,
                "input_mp": round(input_pixels / MEGAPIXEL, 4),
                "output_mp": round(width * height / MEGAPIXEL, 4),
            }
        )

    async def get_result(self, request: Request) -> Response:
        if (denied := self._auth(request)) is not None:
            return denied
        if (injected := self.state.injected()) is not None:
            return _error(*injected)
        task = self.tasks.get(request.query_params.get("id", ""))
        now = time.monotonic()
        if (
            task is not None
            and task.ended is not None
            and now - task.ended > self.config.task_ttl_s
        ):
            task = None
        if task is None:
            return JSONResponse({"id": request.query_params.get("id"), "status": "Task not found"})
        if task.ended is None and now - task.submitted < self.config.ready_after_s:
            return JSONResponse({"id": task.id, "status": "Pending", "progress": 0.5})
        if task.ended is None:
            task.ended = now
            if task.outcome == "Ready":
                task.image = await render_png(
                    task.model, task.prompt, task.seed, 0, task.width, task.height
                )
        if task.outcome != "Ready":
            return JSONResponse({"id": task.id, "status": task.outcome, "details": {}})
        root = str(request.base_url).rstrip("/")
        expires = time.time() + self.config.sample_ttl_s - (now - task.ended)
        return JSONResponse(
            {
                "id": task.id,
                "status": "Ready",
                "result": {
                    "sample": f"{root}/delivery/{task.id}.png?exp={expires:.3f}&sig=sim",
                    "prompt": task.prompt,
                    "seed": task.seed,
                },
                "progress": 1.0,
            }
        )

    async def delivery(self, request: Request) -> Response:
        task = self.tasks.get(request.path_params["task"])
        expires = float(request.query_params.get("exp", "0"))
        if task is None or task.image is None or time.time() > expires:
            return Response(b"<Error><Code>AccessDenied</Code></Error>", status_code=403)
        return Response(task.image, media_type="image/png")

    async def balance(self, request: Request) -> Response:
        if (denied := self._auth(request)) is not None:
            return denied
        return JSONResponse({"credits": self.credits})

    # -- rules ---------------------------------------------------------------------------

    def _auth(self, request: Request) -> Response | None:
        key = request.headers.get("x-key")
        if not key or (self.config.api_key is not None and key != self.config.api_key):
            return JSONResponse({"detail": "Invalid or missing API key"}, status_code=401)
        return None

    @staticmethod
    def _size(size_rule: str, body: dict[str, Any]) -> tuple[int, int]:
        if size_rule == "any":  # Kontext: an aspect ratio around 1 MP
            ratio = str(body.get("aspect_ratio") or "1:1").split(":")
            aspect = int(ratio[0]) / int(ratio[1])
            width = int(math.sqrt(MEGAPIXEL * aspect)) // 16 * 16
            return width, int(MEGAPIXEL / width) // 16 * 16
        return int(body.get("width") or 1024), int(body.get("height") or 1024)

    def _limit(self, model: str) -> int:
        return (
            self.config.kontext_max_limit
            if model == "flux-kontext-max"
            else self.config.active_limit
        )

    @staticmethod
    def _same_limit(task: _Task, model: str) -> bool:
        return (task.model == "flux-kontext-max") == (model == "flux-kontext-max")


def create_bfl_app(
    config: BflConfig | None = None, *, table: ModelTable | None = None
) -> Starlette:
    """The BFL simulator as an ASGI app (run it with ``running(app=…)``)."""
    sim = BflSimulator(config or BflConfig(), table)
    routes = [
        Route("/v1/get_result", sim.get_result),
        Route("/v1/credits", sim.balance),
        Route("/v1/{model}", sim.submit, methods=["POST"]),
        Route("/delivery/{task}.png", sim.delivery),
    ]
    controls = control_routes(sim.state)
    app = Starlette(routes=[*routes, *controls])
    app.state.bfl = sim
    return app


def _input_keys(count: int) -> list[str]:
    return ["input_image", *(f"input_image_{i}" for i in range(2, count + 1))]


def _invalid(field: str, message: str) -> Response:
    return JSONResponse(
        {"detail": [{"loc": ["body", field], "msg": message, "type": "value_error"}]},
        status_code=422,
    )


def _error(status: int, code: str) -> Response:
    headers = {"Retry-After": "0.05"} if status == 429 else {}
    return JSONResponse(
        {"detail": code or f"simulated HTTP {status}"}, status_code=status, headers=headers
    )
