"""DashScopeProvider's tests against ``httpx.MockTransport``: the documented answers, a
scripted server, a clock that moves only when the provider sleeps, and request builders.

Every response body here is copied from ``docs/providers/dashscope.md`` (§4.1–§4.4, §5). The
fixtures that build providers on them (``fake_time``, ``make``) are in
``tests/providers/conftest.py``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
from support import KEY

from qwbatch import __version__
from qwbatch.core.types import RenderRequest
from qwbatch.providers.dashscope import DashScopeProvider

BASE = "https://dashscope.test/api/v1"
GENERATION_URL = f"{BASE}/services/aigc/multimodal-generation/generation"
SYNTHESIS_URL = f"{BASE}/services/aigc/text2image/image-synthesis"
OSS_URL = (
    "https://dashscope-result-sh.oss-cn-shanghai.aliyuncs.com/xxx.png"
    "?Expires=1700000000&OSSAccessKeyId=LTAI&Signature=abc%3D"
)
TASK_ID = "878f591e-1234"

# §4.1, the official sync sample.
SYNC_OK: dict[str, Any] = {
    "output": {
        "choices": [
            {
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": [{"image": OSS_URL}]},
            }
        ]
    },
    "usage": {"width": 1664, "height": 928, "image_count": 1},
    "request_id": "d0250a3d-0001",
}
# §4.2
TASK_CREATED = {
    "output": {"task_status": "PENDING", "task_id": TASK_ID},
    "request_id": "4909100c-0001",
}
# §4.3
TASK_OK: dict[str, Any] = {
    "request_id": "7434edb2-0001",
    "output": {
        "task_id": TASK_ID,
        "task_status": "SUCCEEDED",
        "submit_time": "2025-09-09 11:38:54.741",
        "scheduled_time": "2025-09-09 11:38:54.781",
        "end_time": "2025-09-09 11:39:19.484",
        "results": [{"orig_prompt": "a cat", "actual_prompt": "a cat, rewritten", "url": OSS_URL}],
    },
    "usage": {"image_count": 1},
}
OSS_EXPIRED = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n  <Code>AccessDenied</Code>\n'
    "  <Message>Request has expired.</Message>\n</Error>"
)


def task(status: str, **output: Any) -> dict[str, Any]:
    return {
        "request_id": "poll-0001",
        "output": {"task_id": TASK_ID, "task_status": status, **output},
    }


def reply(
    status: int = 200,
    body: Any = None,
    *,
    text: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    if text is not None:
        return httpx.Response(status, text=text, headers=headers)
    return httpx.Response(status, json=body, headers=headers)


def req(**overrides: Any) -> RenderRequest:
    fields: dict[str, Any] = {
        "row_id": "r1",
        "row_number": 0,
        "request_key": "k1",
        "model": "qwen-image-2.0-pro",
        "mode": "generate",
        "prompt": "a cat",
        "seed": 42,
    }
    return RenderRequest(**{**fields, **overrides})


class Server:
    """A scripted MockTransport handler: answers in order, the last one forever; records."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        # A fresh copy each time: one Response object must not be sent twice.
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]


class FakeTime:
    """A clock that only moves when the provider sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


Make = Callable[..., DashScopeProvider]


def body_of(request: httpx.Request) -> Any:
    return json.loads(request.content)


def assert_api_headers(request: httpx.Request, *, async_task: bool = False) -> None:
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["accept"] == "application/json"
    assert request.headers["user-agent"] == f"qwbatch/{__version__}"
    assert ("x-dashscope-async" in request.headers) is async_task
    if async_task:
        assert request.headers["x-dashscope-async"] == "enable"
    assert "x-dashscope-workspace" not in request.headers
