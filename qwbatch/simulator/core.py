"""The simulated provider: what each endpoint does, independent of the web framework.

Every public method takes the raw request facts and returns a :class:`Reply`; refusals are
:class:`~qwbatch.simulator.protocol.ApiError` inside and error bodies outside. Billing is
recorded when images are generated — before a sync response is sent (so a dropped connection
is still billed), when an async task succeeds.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio.to_thread

from qwbatch.core.model_table import ModelSpec, ModelTable
from qwbatch.simulator import render
from qwbatch.simulator.config import SimulatorConfig
from qwbatch.simulator.limits import InFlight, RateLimiter
from qwbatch.simulator.protocol import (
    ApiError,
    InputImage,
    Job,
    actual_prompt,
    error_body,
    load_images,
    new_request_id,
    output_size,
    parse_generation,
    parse_synthesis,
    usage_body,
)
from qwbatch.simulator.state import Dice, Ledger, ResultStore, Task, TaskStore

log = logging.getLogger(__name__)

_INTERNAL_ERROR = (
    "An internal error has occured, please try again later or contact service support."
)
_ITEM_FAILED = "InternalError.Algo"
_ITEM_FAILED_MESSAGE = "Inner error: the algorithm failed to generate this image."
_GATEWAY_503 = (
    "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    "<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n"
    "<hr><center>Tengine</center>\r\n</body>\r\n</html>\r\n"
)
_OSS_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n  <Code>{code}</Code>\n'
    "  <Message>{message}</Message>\n  <RequestId>{request_id}</RequestId>\n"
    "  <HostId>dashscope-result-sim.oss-accelerate.aliyuncs.com</HostId>\n</Error>\n"
)


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer: JSON, raw content, or (``drop``) no answer at all."""

    status: int = 200
    json: Any = None
    content: bytes = b""
    media_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Close the connection without a response (the ambiguous, billed case).
    drop: bool = False


class Simulator:
    """State and behaviour of one simulated DashScope account."""

    def __init__(self, config: SimulatorConfig, table: ModelTable | None = None) -> None:
        self.initial_config = config
        self.config = config
        self.table = table if table is not None else _load_table(config)
        self._fixed_table = table is not None
        self.ledger = Ledger()
        self.dice = Dice(config.seed)
        self.limiter = RateLimiter()
        self.in_flight = InFlight()
        self.results = ResultStore()
        self.tasks = TaskStore()
        self._responses = 0

    # ------------------------------------------------------------------ control (/_sim)

    def configure(self, patch: Mapping[str, Any]) -> SimulatorConfig:
        """Apply a partial update of knobs (pydantic ValidationError / ConfigError if bad)."""
        return self._set_config(self.config.updated(dict(patch)))

    def reset(self, *, restore_config: bool = False) -> None:
        """Forget the ledger, counters, results and tasks; optionally the knob changes too."""
        self.tasks.clear()
        self.results.clear()
        self.limiter.clear()
        self.ledger = Ledger()
        self._responses = 0
        if restore_config:
            self._set_config(self.initial_config)
        self.dice = Dice(self.config.seed)

    def _set_config(self, config: SimulatorConfig) -> SimulatorConfig:
        models_changed = (config.models_file, config.declared_models) != (
            self.config.models_file,
            self.config.declared_models,
        )
        if models_changed and not self._fixed_table:
            self.table = _load_table(config)
        self.config = config
        self.dice.seed = config.seed
        return config

    # ------------------------------------------------------------------ sync generation

    async def generate(self, raw: bytes, *, authorization: str | None, base_url: str) -> Reply:
        """``POST /services/aigc/multimodal-generation/generation``."""
        request_id = new_request_id()
        config = self.config
        self.ledger.requests["generation"] += 1
        try:
            self._authorize(config, authorization)
            self._in_good_standing(config)
            job = parse_generation(_json(config, raw), self.table)
            images = await load_images(
                job.image_refs,
                max_bytes=config.max_input_image_bytes,
                side_range=(384, 3072) if config.strict_input_sides else None,
            )
            self._throttle(config, job.spec, self.dice.key("throttle-generation", raw))
            limit = _in_flight_limit(config, job.spec)
            if limit is not None and self.in_flight.count(job.model) >= limit:
                raise self._throttled(
                    config,
                    "Throttling",
                    f"Too many requests in flight for {job.model}, please try again later.",
                )
            self.in_flight.enter(job.model)
            try:
                key = self.dice.key("generation", raw)
                return await self._generate(config, job, images, key, request_id, base_url)
            finally:
                self.in_flight.leave(job.model)
        except ApiError as error:
            return self._error(request_id, error)

    async def _generate(
        self,
        config: SimulatorConfig,
        job: Job,
        images: Sequence[InputImage],
        key: str,
        request_id: str,
        base_url: str,
    ) -> Reply:
        _moderate(config, job)
        await asyncio.sleep(self._latency(config, key))
        fault = self._fault(config, key, request_id)
        if fault is not None:
            return fault
        width, height = output_size(job, images)
        base_image = images[0].data if images else None
        extras = tuple(i.data for i in images[1:] if i.data is not None)
        urls = [
            self._store(config, job, index, width, height, base_image, key, base_url, extras)
            for index in self._surviving_items(config, job, key)
        ]
        if not urls:
            raise ApiError(500, _ITEM_FAILED, _ITEM_FAILED_MESSAGE)
        self.ledger.bill(job, len(urls), request_id=request_id, task_id=None, inputs=images)
        if self.dice.hit(config.drop_connection_rate, "drop", key):
            self.ledger.dropped += 1
            return Reply(drop=True)
        content = [{"image": url} for url in urls]
        return Reply(
            json={
                "output": {
                    "choices": [
                        {
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": content},
                        }
                    ]
                },
                "usage": usage_body(
                    self._usage_style(config), width=width, height=height, count=len(urls)
                ),
                "request_id": request_id,
            }
        )

    # ------------------------------------------------------------------ async tasks

    async def create_task(
        self, raw: bytes, *, authorization: str | None, async_header: str | None, base_url: str
    ) -> Reply:
        """``POST /services/aigc/text2image/image-synthesis`` with ``X-DashScope-Async``."""
        request_id = new_request_id()
        config = self.config
        self.ledger.requests["image-synthesis"] += 1
        try:
            self._authorize(config, authorization)
            self._in_good_standing(config)
            if (async_header or "").strip().lower() != "enable":
                raise ApiError(
                    400, "AccessDenied", "current user api does not support synchronous calls"
                )
            job = parse_synthesis(_json(config, raw), self.table)
            self._throttle(config, job.spec, self.dice.key("throttle-synthesis", raw))
            _moderate(config, job)
            key = self.dice.key("image-synthesis", raw)
            fault = self._fault(config, key, request_id)
            if fault is not None:
                return fault
            task = self.tasks.add(job, request_id=request_id, ttl_s=config.task_ttl_s)
            task.runner = asyncio.create_task(self._run_task(config, task, key, base_url))
            if self.dice.hit(config.drop_connection_rate, "drop", key):
                self.ledger.dropped += 1
                return Reply(drop=True)
            return Reply(
                json={
                    "output": {"task_status": "PENDING", "task_id": task.task_id},
                    "request_id": request_id,
                }
            )
        except ApiError as error:
            return self._error(request_id, error)

    async def _run_task(self, config: SimulatorConfig, task: Task, key: str, base_url: str) -> None:
        try:
            await asyncio.sleep(config.queue_s)
            task.status, task.scheduled_at = "RUNNING", time.time()
            await asyncio.sleep(self._latency(config, key))
            if self.dice.hit(config.task_failure_rate, "task_failure", key):
                self._end(task, "FAILED", _ITEM_FAILED, _ITEM_FAILED_MESSAGE)
                return
            job = task.job
            width, height = output_size(job, ())
            survivors = set(self._surviving_items(config, job, key))
            for index in range(job.n):
                if index in survivors:
                    url = self._store(config, job, index, width, height, None, key, base_url)
                    task.results.append(
                        {"orig_prompt": job.prompt, "actual_prompt": actual_prompt(job), "url": url}
                    )
                else:
                    task.results.append({"code": _ITEM_FAILED, "message": _ITEM_FAILED_MESSAGE})
            task.billed = len(survivors)
            if not survivors:
                self._end(task, "FAILED", _ITEM_FAILED, _ITEM_FAILED_MESSAGE)
                return
            self.ledger.bill(job, task.billed, request_id=task.request_id, task_id=task.task_id)
            self._end(task, "SUCCEEDED")
        except Exception:  # CancelledError (a reset) is a BaseException and passes through
            # A simulator bug must not leave a task RUNNING forever; report it like the
            # provider reports its own failures, and keep the traceback in the log.
            log.exception("simulated task %s crashed", task.task_id)
            self._end(task, "FAILED", "InternalError", _INTERNAL_ERROR)

    @staticmethod
    def _end(
        task: Task,
        status: Literal["SUCCEEDED", "FAILED"],
        code: str | None = None,
        message: str | None = None,
    ) -> None:
        task.status, task.code, task.message, task.ended_at = status, code, message, time.time()

    def poll(self, task_id: str, *, authorization: str | None) -> Reply:
        """``GET /tasks/{task_id}``."""
        request_id = new_request_id()
        config = self.config
        self.ledger.requests["tasks"] += 1
        self.ledger.polls += 1
        try:
            self._authorize(config, authorization)
            if config.task_query_rps is not None and not self.limiter.allow(
                "__tasks__", config.task_query_rps
            ):
                raise self._throttled(
                    config,
                    "Throttling.RateQuota",
                    "Requests rate limit exceeded, please try again later.",
                )
            fault = self._fault(
                config, self.dice.key("tasks", task_id.encode()), request_id, in_200=False
            )
            if fault is not None:
                return fault
        except ApiError as error:
            return self._error(request_id, error)
        task = self.tasks.get(task_id)
        if task is None:
            return Reply(
                json={
                    "request_id": request_id,
                    "output": {"task_id": task_id, "task_status": "UNKNOWN"},
                }
            )
        return Reply(json=self._task_body(config, task, request_id))

    def _task_body(self, config: SimulatorConfig, task: Task, request_id: str) -> dict[str, Any]:
        output: dict[str, Any] = {
            "task_id": task.task_id,
            "task_status": task.status,
            "submit_time": _timestamp(task.submitted_at),
        }
        if task.scheduled_at is not None:
            output["scheduled_time"] = _timestamp(task.scheduled_at)
        if task.ended_at is not None:
            output["end_time"] = _timestamp(task.ended_at)
        body: dict[str, Any] = {"request_id": request_id, "output": output}
        if task.status == "SUCCEEDED":
            output["results"] = task.results
            output["task_metrics"] = {
                "TOTAL": task.job.n,
                "SUCCEEDED": task.billed,
                "FAILED": task.job.n - task.billed,
            }
            body["usage"] = usage_body(
                self._usage_style(config), width=None, height=None, count=task.billed
            )
        elif task.code is not None:
            output["code"], output["message"] = task.code, task.message
        return body

    def list_tasks(self, query: Mapping[str, str], *, authorization: str | None) -> Reply:
        """``GET /tasks?start_time=…&end_time=…&model_name=…&status=…&page_no=…&page_size=…``.

        Times are ``YYYYMMDDhhmmss`` in UTC and bound the submission time; each item carries
        ``task_id``, ``task_status``, ``model_name``, ``request_id`` and ``gmt_create``
        (POSIX milliseconds). Newest first, like a console listing.
        """
        request_id = new_request_id()
        config = self.config
        self.ledger.requests["tasks-list"] += 1
        try:
            self._authorize(config, authorization)
            start = _list_time(query.get("start_time"), "start_time")
            end = _list_time(query.get("end_time"), "end_time")
            page_no = _positive_int(query.get("page_no"), "page_no", 1)
            page_size = min(_positive_int(query.get("page_size"), "page_size", 10), 100)
        except ApiError as error:
            return self._error(request_id, error)
        model, status = query.get("model_name"), query.get("status")
        found = [
            task
            for task in self.tasks.all()
            if (start is None or task.submitted_at >= start)
            and (end is None or task.submitted_at <= end)
            and (not model or task.job.model == model)
            and (not status or task.status == status)
        ]
        found.sort(key=lambda task: task.submitted_at, reverse=True)
        page = found[(page_no - 1) * page_size : page_no * page_size]
        return Reply(
            json={
                "request_id": request_id,
                "data": [
                    {
                        "task_id": task.task_id,
                        "task_status": task.status,
                        "model_name": task.job.model,
                        "request_id": task.request_id,
                        "gmt_create": int(task.submitted_at * 1000),
                    }
                    for task in page
                ],
                "total": len(found),
                "total_page": -(-len(found) // page_size),
                "page_no": page_no,
                "page_size": page_size,
            }
        )

    def cancel(self, task_id: str, *, authorization: str | None) -> Reply:
        """``POST /tasks/{task_id}/cancel``: only a PENDING task can be canceled."""
        request_id = new_request_id()
        self.ledger.requests["cancel"] += 1
        try:
            self._authorize(self.config, authorization)
            task = self.tasks.get(task_id)
            if task is None or task.status != "PENDING":
                raise ApiError(
                    400,
                    "UnsupportedOperation",
                    "Failed to cancel the task, please confirm if the task is in PENDING status.",
                )
        except ApiError as error:
            return self._error(request_id, error)
        if task.runner is not None:
            task.runner.cancel()
        task.status, task.ended_at = "CANCELED", time.time()
        return Reply(json={"request_id": request_id})

    # ------------------------------------------------------------------ results

    async def result(self, name: str) -> Reply:
        """``GET /results/{token}.png``: the image, 403 once expired, 404 if unknown."""
        self.ledger.requests["results"] += 1
        token = name.removesuffix(".png")
        stored = self.results.get(token) if name.endswith(".png") else None
        if stored is None:
            return _oss_error(404, "NoSuchKey", "The specified key does not exist.")
        if time.time() >= stored.expires_at:
            return _oss_error(403, "AccessDenied", "Request has expired.")
        data = self.results.cached_bytes(token)
        if data is None:
            recipe = stored.recipe
            # Fast-mode images come from a cache; anything else renders off the event loop.
            data = (
                render.render(recipe)
                if recipe.fast
                else await anyio.to_thread.run_sync(render.render, recipe)
            )
            self.results.cache_bytes(token, data)
        if stored.corrupt:
            data = render.truncate(data)
        return Reply(content=data, media_type="image/png")

    # ------------------------------------------------------------------ helpers

    def _store(
        self,
        config: SimulatorConfig,
        job: Job,
        index: int,
        width: int,
        height: int,
        base_image: bytes | None,
        key: str,
        base_url: str,
        extra_images: tuple[bytes, ...] = (),
    ) -> str:
        recipe = render.Recipe(
            model=job.model,
            prompt=job.prompt,
            seed=job.seed,
            index=index,
            count=job.n,
            width=width,
            height=height,
            watermark=job.watermark,
            # Fast mode never draws the input: do not hold its bytes for the URL lifetime.
            base_image=None if config.fast else base_image,
            extra_images=() if config.fast else extra_images,
            is_edit=bool(job.image_refs),
            fast=config.fast,
            font_path=config.font_path,
            misspell=self.dice.hit(config.misspell_rate, f"misspell{index}", key),
        )
        corrupt = self.dice.hit(config.corrupt_image_rate, f"corrupt{index}", key)
        expired = self.dice.hit(config.expired_url_rate, f"expired{index}", key)
        ttl_s = 0.0 if expired else config.url_ttl_s
        token, expires_at = self.results.add(recipe, ttl_s=ttl_s, corrupt=corrupt)
        signature = token[:16]
        return (
            f"{base_url.rstrip('/')}/results/{token}.png?Expires={int(expires_at)}"
            f"&OSSAccessKeyId=LTAI5tSimulator&Signature={signature}"
        )

    def _surviving_items(self, config: SimulatorConfig, job: Job, key: str) -> list[int]:
        if job.n == 1:
            return [0]
        rate = config.partial_failure_rate
        return [i for i in range(job.n) if not self.dice.hit(rate, f"item{i}", key)]

    def _authorize(self, config: SimulatorConfig, authorization: str | None) -> None:
        scheme, _, key = (authorization or "").strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise ApiError(401, "InvalidApiKey", "No API-key provided.")
        if config.api_key is not None and key != config.api_key:
            raise ApiError(401, "InvalidApiKey", "Invalid API-key provided.")

    @staticmethod
    def _in_good_standing(config: SimulatorConfig) -> None:
        if config.arrears:
            raise ApiError(
                400,
                "Arrearage",
                "Access denied, please make sure your account is in good standing.",
            )

    def _throttle(self, config: SimulatorConfig, spec: ModelSpec, key: str) -> None:
        now = time.time()
        self.ledger.offered_at.append(now)
        if self.dice.hit(config.throttle_rate, "throttle", key):
            # The burst protection, drawn from the dice rather than the clock.
            raise self._throttled(
                config,
                "Throttling",
                "Request rate increased too quickly, please try again later.",
            )
        if config.rate_limit and not self.limiter.allow(
            spec.name, config.model_rps(spec.name, spec.rps), config.burst
        ):
            raise self._throttled(
                config,
                "Throttling.RateQuota",
                "Requests rate limit exceeded, please try again later.",
            )
        self.ledger.admitted_at.append(now)

    def _throttled(self, config: SimulatorConfig, code: str, message: str) -> ApiError:
        self.ledger.throttled += 1
        headers = {}
        if config.retry_after_s is not None:
            headers["Retry-After"] = f"{config.retry_after_s:g}"
        return ApiError(429, code, message, headers=headers)

    def _fault(
        self, config: SimulatorConfig, key: str, request_id: str, *, in_200: bool = True
    ) -> Reply | None:
        """A server-side failure the dice chose for this request (nothing billed), or None."""
        if self.dice.hit(config.error_5xx_rate, "5xx", key):
            if self.dice.roll("5xx-kind", key) < 0.5:
                return self._error(request_id, ApiError(500, "InternalError", _INTERNAL_ERROR))
            # A gateway in front of the service answers with HTML, not the JSON error body.
            self.ledger.errors["503"] += 1
            return Reply(status=503, content=_GATEWAY_503.encode(), media_type="text/html")
        if in_200 and self.dice.hit(config.error_in_200_rate, "error_in_200", key):
            # "DashScope can return API-level errors in a 200 response body" (no output).
            self.ledger.errors["InternalError"] += 1
            return Reply(json=error_body(request_id, "InternalError", _INTERNAL_ERROR))
        return None

    def _latency(self, config: SimulatorConfig, key: str) -> float:
        return config.latency_s + config.latency_jitter_s * self.dice.roll("latency", key)

    def _usage_style(self, config: SimulatorConfig) -> Literal["docs", "output"]:
        self._responses += 1
        if config.usage_style == "alternate":
            return "docs" if self._responses % 2 else "output"
        return config.usage_style

    def _error(self, request_id: str, error: ApiError) -> Reply:
        self.ledger.errors[error.code] += 1
        return Reply(
            status=error.status,
            json=error_body(request_id, error.code, error.message),
            headers=error.headers,
        )


def _load_table(config: SimulatorConfig) -> ModelTable:
    return ModelTable.load(config.models_file, config.declared_models)


def _json(config: SimulatorConfig, raw: bytes) -> Any:
    if len(raw) > config.max_body_bytes:
        raise ApiError(
            413, "BadRequest.TooLarge", f"The request body exceeds {config.max_body_bytes} bytes."
        )
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "InvalidParameter", "The request body is not valid JSON.") from None


def _moderate(config: SimulatorConfig, job: Job) -> None:
    word = config.moderation_word
    if word and (word in job.prompt or word in (job.negative_prompt or "")):
        raise ApiError(400, "DataInspectionFailed", "Input data may contain inappropriate content.")


def _in_flight_limit(config: SimulatorConfig, spec: ModelSpec) -> int | None:
    if config.max_in_flight == "table":
        return spec.max_in_flight
    return config.max_in_flight


def _timestamp(posix: float) -> str:
    """``2025-09-09 11:38:54.741``, the task API's local-time format."""
    millis = int(posix * 1000) % 1000
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(posix)) + f".{millis:03d}"


def _list_time(value: str | None, name: str) -> float | None:
    """``YYYYMMDDhhmmss`` (UTC) as POSIX seconds; None when absent."""
    if not value:
        return None
    try:
        parsed = time.strptime(value, "%Y%m%d%H%M%S")
    except ValueError:
        raise ApiError(400, "InvalidParameter", f"{name} must be YYYYMMDDhhmmss") from None
    return float(calendar.timegm(parsed))


def _positive_int(value: str | None, name: str, default: int) -> int:
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ApiError(400, "InvalidParameter", f"{name} must be a positive integer")
    return int(value)


def _oss_error(status: int, code: str, message: str) -> Reply:
    body = _OSS_ERROR.format(code=code, message=message, request_id=new_request_id().upper())
    return Reply(status=status, content=body.encode(), media_type="application/xml")
