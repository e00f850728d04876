"""The DashScope wire protocol: request bodies in, validated jobs out, error bodies back.

Parsing is pure (no I/O) and checks every model rule against the model table
(:class:`qwbatch.core.model_table.ModelSpec`); :func:`load_images` is the one step that may fetch.
Shapes follow docs/providers/dashscope.md §3 (requests) and §4 (responses).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from qwbatch.core.model_table import ModelSpec, ModelTable, parse_size
from qwbatch.simulator import render

#: Largest seed the API accepts (inclusive).
SEED_MAX = 2_147_483_647
#: Most input images one edit request may carry.
MAX_INPUT_IMAGES = 3
#: Pixels of an edit's output when no size is given (the aspect ratio follows the last input).
EDIT_DEFAULT_PIXELS = 1024 * 1024
#: Seconds allowed to fetch a loopback input URL.
FETCH_TIMEOUT_S = 10.0

_SIZE_RE = re.compile(r"^\s*\d+\s*\*\s*\d+\s*$")
_DATA_URI_RE = re.compile(r"^data:(image/[\w.+-]+)?(;[\w=-]+)*;base64,", re.IGNORECASE)

Endpoint = Literal["sync", "async"]


class ApiError(Exception):
    """A refusal the simulator answers with an error body ``{request_id, code, message}``."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def invalid(message: str) -> ApiError:
    """400 InvalidParameter, the provider's answer to most bad requests."""
    return ApiError(400, "InvalidParameter", message)


def new_request_id() -> str:
    return str(uuid.uuid4())


def error_body(request_id: str, code: str, message: str) -> dict[str, str]:
    """The error body of docs/providers/dashscope.md §4.4."""
    return {"request_id": request_id, "code": code, "message": message}


@dataclass(frozen=True, slots=True)
class Job:
    """One validated request: what to render, how many, with which seed."""

    endpoint: Endpoint
    model: str
    spec: ModelSpec
    prompt: str
    negative_prompt: str | None
    #: The requested ``W*H``, or None for the model's (or the last input's) default.
    size: str | None
    n: int
    seed: int
    prompt_extend: bool
    watermark: bool
    #: Input image references as sent (``data:`` URIs or URLs), in "Image 1/2/3" order.
    image_refs: tuple[str, ...] = ()

    @property
    def prompt_sha256(self) -> str:
        return hashlib.sha256(self.prompt.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class InputImage:
    """One decoded edit input: its bytes (None when not fetched), size in pixels, Pillow
    format and sha256 (both None when not fetched)."""

    data: bytes | None
    width: int
    height: int
    format: str | None = None
    sha256: str | None = None


def parse_generation(body: Any, table: ModelTable) -> Job:
    """Validate a multimodal-generation body (§3.1 text-to-image, §3.3 editing)."""
    spec = _model(body, table)
    messages = _dict(body.get("input"), "input").get("messages")
    if not isinstance(messages, list) or len(messages) != 1:
        raise invalid("Messages must be single-turn: exactly one message with role 'user'.")
    message = _dict(messages[0], "input.messages[0]")
    if message.get("role") != "user":
        raise invalid("Messages must be single-turn: exactly one message with role 'user'.")
    content = message.get("content")
    if not isinstance(content, list):
        raise invalid("input.messages[0].content must be a list of {text} and {image} items.")
    texts: list[str] = []
    images: list[str] = []
    for item in content:
        if not isinstance(item, dict) or len(item) != 1 or not ({"text", "image"} & set(item)):
            raise invalid('Each content item must be exactly one of {"text": …} or {"image": …}.')
        key, value = next(iter(item.items()))
        if not isinstance(value, str):
            raise invalid(f"The content item {key!r} must be a string.")
        (texts if key == "text" else images).append(value)
    if len(texts) != 1:
        raise invalid(
            f"The message must contain exactly one text item. Got {len(texts)} text items."
        )
    if len(images) > MAX_INPUT_IMAGES or (not images and "generate" not in spec.tasks):
        raise invalid(
            f"For image editing, the message must contain 1~{MAX_INPUT_IMAGES} image content "
            f"items. Got {len(images)} image items."
        )
    if images and "edit" not in spec.tasks:
        raise invalid(f"Model {spec.name} does not support image editing; remove the image items.")
    parameters = _dict(body.get("parameters", {}), "parameters")
    return _job("sync", spec, texts[0], parameters, parameters.get("negative_prompt"), images)


def parse_synthesis(body: Any, table: ModelTable) -> Job:
    """Validate a text2image/image-synthesis body (§3.2), for models with an async endpoint."""
    spec = _model(body, table)
    if not spec.async_endpoint:
        raise invalid(
            f"Model {spec.name} does not support asynchronous calls; use the synchronous "
            "multimodal-generation endpoint."
        )
    input_ = _dict(body.get("input"), "input")
    prompt = input_.get("prompt")
    if not isinstance(prompt, str):
        raise ApiError(400, "BadRequest.EmptyInput", 'Required parameter "input.prompt" missing.')
    parameters = _dict(body.get("parameters", {}), "parameters")
    # The SDK sends negative_prompt in input, the docs in parameters; accept both.
    negative = input_.get("negative_prompt", parameters.get("negative_prompt"))
    return _job("async", spec, prompt, parameters, negative, [])


def _model(body: Any, table: ModelTable) -> ModelSpec:
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "BadRequest.EmptyModel", 'Required parameter "model" missing.')
    if name not in table:
        raise invalid(f"Model not exist: {name}")
    return table.get(name)


def _dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid(f"{where} must be a JSON object.")
    return value


def _job(
    endpoint: Endpoint,
    spec: ModelSpec,
    prompt: str,
    parameters: dict[str, Any],
    negative: Any,
    images: Sequence[str],
) -> Job:
    if not prompt.strip():
        raise ApiError(400, "BadRequest.EmptyInput", "The input text must not be empty.")
    if len(prompt) > spec.prompt_max_chars:
        raise invalid(
            f"Range of input length should be [1, {spec.prompt_max_chars}]; got {len(prompt)}."
        )
    if negative is not None and not isinstance(negative, str):
        raise invalid("The parameter negative_prompt must be a string.")
    if negative is not None and len(negative) > spec.negative_prompt_max_chars:
        raise invalid(
            f"Range of negative_prompt length should be [0, {spec.negative_prompt_max_chars}]; "
            f"got {len(negative)}."
        )
    size = parameters.get("size")
    if size is not None:
        if not isinstance(size, str) or not _SIZE_RE.match(size):
            raise invalid(f"The parameter size must be a string of the form W*H; got {size!r}.")
        size = size.replace(" ", "")
        problem = spec.size_problem(size)
        if problem is not None:
            raise invalid(f"The size is invalid: {problem}.")
    n = _int(parameters, "n", 1)
    if not 1 <= n <= spec.n_max:
        raise invalid(f"The parameter n must be in [1, {spec.n_max}] for {spec.name}; got {n}.")
    default_seed = int(hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8], 16) % SEED_MAX
    seed = _int(parameters, "seed", default_seed)
    if not 0 <= seed <= SEED_MAX:
        raise invalid(f"The parameter seed must be in [0, {SEED_MAX}]; got {seed}.")
    return Job(
        endpoint=endpoint,
        model=spec.name,
        spec=spec,
        prompt=prompt,
        negative_prompt=negative or None,
        size=size,
        n=n,
        seed=seed,
        prompt_extend=_bool(parameters, "prompt_extend", True),
        watermark=_bool(parameters, "watermark", False),
        image_refs=tuple(images),
    )


def _int(parameters: dict[str, Any], key: str, default: int) -> int:
    value = parameters.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"The parameter {key} must be an integer; got {value!r}.")
    return value


def _bool(parameters: dict[str, Any], key: str, default: bool) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise invalid(f"The parameter {key} must be a boolean; got {value!r}.")
    return value


# ---------------------------------------------------------------------------- input images


async def load_images(
    refs: Sequence[str], *, max_bytes: int, side_range: tuple[int, int] | None = None
) -> list[InputImage]:
    """Decode each edit input: ``data:`` URIs, and http(s) URLs on loopback (fetched).

    Other URLs (public hosts, ``oss://``) are not fetched — the simulator makes no outbound
    calls — and stand in as a 1024×1024 neutral image. ``side_range`` (min, max pixels)
    refuses inputs with a side outside it, as some sources say the real service does.
    """
    loaded: list[InputImage] = []
    for position, ref in enumerate(refs, start=1):
        data = await _image_bytes(ref, position)
        if data is None:
            loaded.append(InputImage(None, 1024, 1024))
            continue
        if len(data) > max_bytes:
            raise invalid(
                f"Image {position} is {len(data)} bytes; the limit is {max_bytes} bytes per image."
            )
        try:
            fmt, width, height = render.probe(data)
        except ValueError:
            raise invalid(
                f"Image {position}: the image format is illegal and cannot be opened."
            ) from None
        if side_range is not None and not (
            side_range[0] <= min(width, height) and max(width, height) <= side_range[1]
        ):
            raise invalid(
                f"Image {position} is {width}*{height}; the width and height of the input "
                f"image must be within [{side_range[0]}, {side_range[1]}] pixels."
            )
        sha = hashlib.sha256(data).hexdigest()
        loaded.append(InputImage(data, width, height, fmt, sha))
    return loaded


async def _image_bytes(ref: str, position: int) -> bytes | None:
    match = _DATA_URI_RE.match(ref)
    if match:
        try:
            return base64.b64decode(ref[match.end() :], validate=True)
        except (binascii.Error, ValueError):
            raise invalid(f"Image {position}: the data URI is not valid base64.") from None
    parts = urlsplit(ref)
    if parts.scheme == "oss":
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid(f"Image {position}: the url is invalid; use http(s) or a base64 data URI.")
    if not _is_loopback(parts.hostname):
        return None
    try:
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_S) as client:
            response = await client.get(ref)
    except httpx.HTTPError as exc:
        raise _download_failed(position, type(exc).__name__) from None
    if response.status_code != 200:
        raise _download_failed(position, f"HTTP {response.status_code}")
    return response.content


def _download_failed(position: int, why: str) -> ApiError:
    return ApiError(
        400, "BadRequest.InputDownloadFailed", f"Failed to download input image {position}: {why}."
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------- output


def output_size(job: Job, images: Sequence[InputImage]) -> tuple[int, int]:
    """The output W×H in pixels: the requested size, else the last input's aspect ratio at
    about 1024×1024 pixels (edits), else the model row's ``default_size``."""
    if job.size is None and images:
        last = images[-1]
        return _edit_default_size(last.width / last.height, job.spec)
    parsed = parse_size(job.size or job.spec.default_size)
    return parsed if parsed is not None else (1024, 1024)


def _edit_default_size(aspect: float, spec: ModelSpec) -> tuple[int, int]:
    width = math.sqrt(EDIT_DEFAULT_PIXELS * aspect)
    height = width / aspect
    if spec.size_rule == "sides":
        width = min(max(width, spec.min_side), spec.max_side)
        height = min(max(height, spec.min_side), spec.max_side)
    # Real outputs are multiples of 16 pixels.
    return max(16, round(width / 16) * 16), max(16, round(height / 16) * 16)


def usage_body(
    style: Literal["docs", "output"], *, width: int | None, height: int | None, count: int
) -> dict[str, int]:
    """``usage`` in one of the two spellings seen in the wild (docs/providers/dashscope.md §4.1)."""
    prefix = "output_" if style == "output" else ""
    usage: dict[str, int] = {}
    if width is not None and height is not None:
        usage[f"{prefix}width"] = width
        usage[f"{prefix}height"] = height
    usage[f"{prefix}image_count"] = count
    return usage


def actual_prompt(job: Job) -> str:
    """What prompt_extend "rewrote" the prompt into (deterministic)."""
    if not job.prompt_extend:
        return job.prompt
    return f"{job.prompt.rstrip('. ')}. Rich detail, balanced composition, soft natural light."
