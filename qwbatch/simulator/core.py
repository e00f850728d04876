"""The simulated provider: what each endpoint does, independent of the web framework.

Every public method takes the raw request facts and returns a :class:`Reply`; refusals are
:class:`~qwbatch.simulator.protocol.ApiError` inside and error bodies outside. A call first
passes the account's checks (:mod:`qwbatch.simulator.account`: key, standing, rate, faults).
Billing is recorded when images are generated — before a sync response is sent (so a dropped
connection is still billed), when an async task succeeds.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import anyio.to_thread

from qwbatch.core.model_table import ModelTable
from qwbatch.simulator import render
from qwbatch.simulator.account import (
    INTERNAL_ERROR,
    Account,
    Reply,
    in_flight_limit,
    moderate,
    read_body,
)
from qwbatch.simulator.config import SimulatorConfig
from qwbatch.simulator.protocol import (
    ApiError,
    InputImage,
    Job,
    actual_prompt,
    load_images,
    new_request_id,
    output_size,
    parse_generation,
    parse_synthesis,
    usage_body,
)
from qwbatch.simulator.state import Task

__all__ = ["Reply", "Simulator"]

log = logging.getLogger(__name__)

_ITEM_FAILED = "InternalError.Algo"
_ITEM_FAILED_MESSAGE = "Inner error: the algorithm failed to generate this image."
_OSS_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n  <Code>{code}</Code>\n'
    "  <Message>{message}</Message>\n  <RequestId>{request_id}</RequestId>\n"
    "  <HostId>dashscope-result-sim.oss-accelerate.aliyuncs.com</HostId>\n</Error>\n"
)


class Simulator:
    """The endpoints of one simulated DashScope account (:attr:`account`: its state)."""

    def __init__(self, config: SimulatorConfig, table: ModelTable | None = None) -> None:
        self.account = Account(config, table)

    # ------------------------------------------------------------------ sync generation

    async def generate(self, raw: bytes, *, authorization: str | None, base_url: str) -> Reply:
        """``POST /services/aigc/multimodal-generation/generation``."""
        request_id = new_request_id()
        config = self.account.config
        self.account.ledger.requests["generation"] += 1
        try:
            self.account.authorize(config, authorization)
            self.account.in_good_standing(config)
            job = parse_generation(read_body(config, raw), self.account.table)
            images = await load_images(
                job.image_refs,
                max_bytes=config.max_input_image_bytes,
                side_range=(384, 3072) if config.strict_input_sides else None,
            )
            self.account.throttle(
                config, job.spec, self.account.dice.key("throttle-generation", raw)
            )
            limit = in_flight_limit(config, job.spec)
            if limit is not None and self.account.in_flight.count(job.model) >= limit:
                raise self.account.throttled(
                    config,
                    "Throttling",
                    f"Too many requests in flight for {job.model}, please try again later.",
                )
            self.account.in_flight.enter(job.model)
            try:
                key = self.account.dice.key("generation", raw)
                return await self._generate(config, job, images, key, request_id, base_url)
            finally:
                self.account.in_flight.leave(job.model)
        except ApiError as error:
            return self.account.error_reply(request_id, error)

    async def _generate(
        self,
        config: SimulatorConfig,
        job: Job,
        images: Sequence[InputImage],
        key: str,
        request_id: str,
        base_url: str,
    ) -> Reply:
        moderate(config, job)
        await asyncio.sleep(self.account.latency(config, key))
        fault = self.account.fault(config, key, request_id)
        if fault is not None:
            return fault
        width, height = output_size(job, images)
        base_image = images[0].data if images else None
        extras = tuple(i.data for i in images[1:] if i.data is not None)
        urls = [
            self.account.store_result(
                config, job, index, width, height, base_image, key, base_url, extras
            )
            for index in self.account.surviving_items(config, job, key)
        ]
        if not urls:
            raise ApiError(500, _ITEM_FAILED, _ITEM_FAILED_MESSAGE)
        self.account.ledger.bill(job, len(urls), request_id=request_id, task_id=None, inputs=images)
        if self.account.dice.hit(config.drop_connection_rate, "drop", key):
            self.account.ledger.dropped += 1
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
                    self.account.usage_style(config), width=width, height=height, count=len(urls)
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
        config = self.account.config
        self.account.ledger.requests["image-synthesis"] += 1
        try:
            self.account.authorize(config, authorization)
            self.account.in_good_standing(config)
            if (async_header or "").strip().lower() != "enable":
                raise ApiError(
                    400, "AccessDenied", "current user api does not support synchronous calls"
                )
            job = parse_synthesis(read_body(config, raw), self.account.table)
            self.account.throttle(
                config, job.spec, self.account.dice.key("throttle-synthesis", raw)
            )
            moderate(config, job)
            key = self.account.dice.key("image-synthesis", raw)
            fault = self.account.fault(config, key, request_id)
            if fault is not None:
                return fault
            task = self.account.tasks.add(job, request_id=request_id, ttl_s=config.task_ttl_s)
            task.runner = asyncio.create_task(self._run_task(config, task, key, base_url))
            if self.account.dice.hit(config.drop_connection_rate, "drop", key):
                self.account.ledger.dropped += 1
                return Reply(drop=True)
            return Reply(
                json={
                    "output": {"task_status": "PENDING", "task_id": task.task_id},
                    "request_id": request_id,
                }
            )
        except ApiError as error:
            return self.account.error_reply(request_id, error)

    async def _run_task(self, config: SimulatorConfig, task: Task, key: str, base_url: str) -> None:
        try:
            await asyncio.sleep(config.queue_s)
            task.status, task.scheduled_at = "RUNNING", time.time()
            await asyncio.sleep(self.account.latency(config, key))
            if self.account.dice.hit(config.task_failure_rate, "task_failure", key):
                self._end(task, "FAILED", _ITEM_FAILED, _ITEM_FAILED_MESSAGE)
                return
            job = task.job
            width, height = output_size(job, ())
            survivors = set(self.account.surviving_items(config, job, key))
            for index in range(job.n):
                if index in survivors:
                    url = self.account.store_result(
                        config, job, index, width, height, None, key, base_url
                    )
                    task.results.append(
                        {"orig_prompt": job.prompt, "actual_prompt": actual_prompt(job), "url": url}
                    )
                else:
                    task.results.append({"code": _ITEM_FAILED, "message": _ITEM_FAILED_MESSAGE})
            task.billed = len(survivors)
            if not survivors:
                self._end(task, "FAILED", _ITEM_FAILED, _ITEM_FAILED_MESSAGE)
                return
            self.account.ledger.bill(
                job, task.billed, request_id=task.request_id, task_id=task.task_id
            )
            self._end(task, "SUCCEEDED")
        except Exception:  # CancelledError (a reset) is a BaseException and passes through
            # A simulator bug must not leave a task RUNNING forever; report it like the
            # provider reports its own failures, and keep the traceback in the log.
            log.exception("simulated task %s crashed", task.task_id)
            self._end(task, "FAILED", "InternalError", INTERNAL_ERROR)

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
        config = self.account.config
        self.account.ledger.requests["tasks"] += 1
        self.account.ledger.polls += 1
        try:
            self.account.authorize(config, authorization)
            if config.task_query_rps is not None and not self.account.limiter.allow(
                "__tasks__", config.task_query_rps
            ):
                raise self.account.throttled(
                    config,
                    "Throttling.RateQuota",
                    "Requests rate limit exceeded, please try again later.",
                )
            fault = self.account.fault(
                config, self.account.dice.key("tasks", task_id.encode()), request_id, in_200=False
            )
            if fault is not None:
                return fault
        except ApiError as error:
            return self.account.error_reply(request_id, error)
        task = self.account.tasks.get(task_id)
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
                self.account.usage_style(config), width=None, height=None, count=task.billed
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
        config = self.account.config
        self.account.ledger.requests["tasks-list"] += 1
        try:
            self.account.authorize(config, authorization)
            start = _list_time(query.get("start_time"), "start_time")
            end = _list_time(query.get("end_time"), "end_time")
            page_no = _positive_int(query.get("page_no"), "page_no", 1)
            page_size = min(_positive_int(query.get("page_size"), "page_size", 10), 100)
        except ApiError as error:
            return self.account.error_reply(request_id, error)
        model, status = query.get("model_name"), query.get("status")
        found = [
            task
            for task in self.account.tasks.all()
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
        self.account.ledger.requests["cancel"] += 1
        try:
            self.account.authorize(self.account.config, authorization)
            task = self.account.tasks.get(task_id)
            if task is None or task.status != "PENDING":
                raise ApiError(
                    400,
                    "UnsupportedOperation",
                    "Failed to cancel the task, please confirm if the task is in PENDING status.",
                )
        except ApiError as error:
            return self.account.error_reply(request_id, error)
        if task.runner is not None:
            task.runner.cancel()
        task.status, task.ended_at = "CANCELED", time.time()
        return Reply(json={"request_id": request_id})

    # ------------------------------------------------------------------ results

    async def result(self, name: str) -> Reply:
        """``GET /results/{token}.png``: the image, 403 once expired, 404 if unknown."""
        self.account.ledger.requests["results"] += 1
        token = name.removesuffix(".png")
        stored = self.account.results.get(token) if name.endswith(".png") else None
        if stored is None:
            return _oss_error(404, "NoSuchKey", "The specified key does not exist.")
        if time.time() >= stored.expires_at:
            return _oss_error(403, "AccessDenied", "Request has expired.")
        data = self.account.results.cached_bytes(token)
        if data is None:
            recipe = stored.recipe
            # Fast-mode images come from a cache; anything else renders off the event loop.
            data = (
                render.render(recipe)
                if recipe.fast
                else await anyio.to_thread.run_sync(render.render, recipe)
            )
            self.account.results.cache_bytes(token, data)
        if stored.corrupt:
            data = render.truncate(data)
        return Reply(content=data, media_type="image/png")


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
