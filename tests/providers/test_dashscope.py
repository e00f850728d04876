"""DashScopeProvider against ``httpx.MockTransport`` answering with the documented shapes.

Every response body here is copied from ``docs/providers/dashscope.md`` (§4.1–§4.4, §5); every
request is checked down to its URL, headers and JSON body.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from support import KEY

from qwbatch import __version__
from qwbatch.core.errors import (
    AmbiguousError,
    ModerationError,
    PermanentError,
    ProviderAmbiguousError,
    ProviderError,
    ProviderTransientError,
    QwBatchError,
    ResultExpiredError,
    TaskDeadlineError,
    ThrottledError,
    TransientError,
)
from qwbatch.core.settings import Settings
from qwbatch.core.types import ProviderImage, RenderRequest
from qwbatch.providers.dashscope import DashScopeProvider, classify_error, parse_retry_after

pytestmark = pytest.mark.anyio

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


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


Make = Callable[..., DashScopeProvider]


@pytest.fixture
async def make(fake_time: FakeTime) -> AsyncIterator[Make]:
    clients: list[httpx.AsyncClient] = []

    def build(
        server: Server, *, client_headers: dict[str, str] | None = None, **knobs: Any
    ) -> DashScopeProvider:
        client = httpx.AsyncClient(transport=httpx.MockTransport(server), headers=client_headers)
        clients.append(client)
        options: dict[str, Any] = {
            "poll_interval_s": 1.0,
            "poll_max_interval_s": 4.0,
            "task_deadline_s": 60.0,
            "sleep": fake_time.sleep,
            "clock": fake_time.clock,
            **knobs,
        }
        return DashScopeProvider(client=client, base_url=BASE + "/", api_key=KEY, **options)

    yield build
    for client in clients:
        await client.aclose()


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


# -- generate -------------------------------------------------------------------------------


async def test_generate_sends_the_documented_text_to_image_body(make: Make) -> None:
    server = Server(reply(200, SYNC_OK))
    provider = make(server)
    request = req(size="2048x2048", negative_prompt="blurry", prompt_extend=True)

    result = await provider.generate(request)

    sent = server.last
    assert (sent.method, str(sent.url)) == ("POST", GENERATION_URL)
    assert_api_headers(sent)
    assert sent.headers["content-type"] == "application/json"
    assert body_of(sent) == {
        "model": "qwen-image-2.0-pro",
        "input": {"messages": [{"role": "user", "content": [{"text": "a cat"}]}]},
        "parameters": {
            "size": "2048*2048",
            "n": 1,
            "seed": 42,
            "negative_prompt": "blurry",
            "prompt_extend": True,
            "watermark": False,
        },
    }
    assert result.images == (ProviderImage(url=OSS_URL, index=0),)
    assert result.request_id == "d0250a3d-0001"
    assert (result.width, result.height, result.billed_images) == (1664, 928, 1)
    assert result.task_id is None


async def test_generate_edit_puts_images_first_and_omits_unset_parameters(make: Make) -> None:
    second = OSS_URL.replace("xxx", "yyy")
    answer = {
        "output": {
            "choices": [
                {
                    "message": {
                        "role": "assistant",
                        "content": [{"image": OSS_URL}, {"image": second}],
                    }
                }
            ]
        },
        "usage": {"output_width": 1024, "output_height": 2048, "output_image_count": 2},
        "request_id": "edit-0001",
    }
    server = Server(reply(200, answer))
    provider = make(server, workspace_id="ws-123")
    request = req(model="qwen-image-edit-plus", mode="edit", n=2, watermark=True)
    images = ["https://example.test/in1.png", "data:image/jpeg;base64,/9j/4AAQ"]

    result = await provider.generate(request, images)

    assert server.last.headers["x-dashscope-workspace"] == "ws-123"
    assert body_of(server.last) == {
        "model": "qwen-image-edit-plus",
        "input": {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"image": "https://example.test/in1.png"},
                        {"image": "data:image/jpeg;base64,/9j/4AAQ"},
                        {"text": "a cat"},
                    ],
                }
            ]
        },
        # No size (the model's default), no negative prompt, no prompt_extend: all unset.
        "parameters": {"n": 2, "seed": 42, "watermark": True},
    }
    assert result.images == (ProviderImage(OSS_URL, 0), ProviderImage(second, 1))
    assert (result.width, result.height, result.billed_images) == (1024, 2048, 2)


async def test_generate_without_usage_bills_the_images_returned(make: Make) -> None:
    answer = {key: value for key, value in SYNC_OK.items() if key != "usage"}
    result = await make(Server(reply(200, answer))).generate(req())
    assert result.billed_images == 1
    assert (result.width, result.height) == (None, None)


async def test_generate_rejects_a_malformed_size_without_calling(make: Make) -> None:
    server = Server(reply(200, SYNC_OK))
    with pytest.raises(ProviderError) as caught:
        await make(server).generate(req(size="big"))
    assert caught.value.code == "InvalidParameter"
    assert server.requests == []


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("InvalidParameter", ProviderError),
        ("DataInspectionFailed", ModerationError),
        ("Throttling.RateQuota", ThrottledError),
        ("InternalError", ProviderTransientError),
    ],
)
async def test_an_error_inside_a_200_is_an_error(
    make: Make, code: str, expected: type[QwBatchError]
) -> None:
    body = {"request_id": "err-0001", "code": code, "message": "nope"}
    with pytest.raises(expected) as caught:
        await make(Server(reply(200, body))).generate(req())
    error = caught.value
    assert type(error) is expected
    assert isinstance(error, ProviderError | ProviderTransientError)
    assert (error.code, error.status_code, error.request_id) == (code, 200, "err-0001")
    assert "nope" in str(error)


# -- error classification (§5) --------------------------------------------------------------

CLASSIFICATION = [
    (429, "Throttling", ThrottledError),
    (429, "Throttling.RateQuota", ThrottledError),
    (429, "Throttling.AllocationQuota", ThrottledError),
    (429, None, ThrottledError),  # "Request rate increased too quickly", code unknown
    (500, "InternalError", ProviderTransientError),
    (500, "InternalError.Algo", ProviderTransientError),
    (502, None, ProviderTransientError),
    (503, None, ProviderTransientError),
    (504, None, ProviderTransientError),
    (408, "RequestTimeOut", ProviderTransientError),
    (599, "SomethingNew", ProviderTransientError),
    (400, "DataInspectionFailed", ModerationError),
    (400, "InvalidParameter", ProviderError),
    (400, "InvalidParameter.DataInspection", ProviderError),
    (400, "BadRequest.EmptyInput", ProviderError),
    (400, "BadRequest.InputDownloadFailed", ProviderError),
    (413, "BadRequest.TooLarge", ProviderError),
    (400, "InvalidURL", ProviderError),
    (400, "Arrearage", ProviderError),
    (401, "InvalidApiKey", ProviderError),
    (403, "AccessDenied", ProviderError),
    (403, "AccessDenied.Unpurchased", ProviderError),
    (403, "Model.AccessDenied", ProviderError),
    (403, "AllocationQuota.FreeTierOnly", ProviderError),
    (429, "AllocationQuota.Exceeded", ProviderError),  # status unverified; the code decides
    (418, None, ProviderError),
    (400, "SomethingNew", ProviderError),
]


@pytest.mark.parametrize(("status", "code", "expected"), CLASSIFICATION)
async def test_each_documented_error_maps_to_its_class(
    make: Make, status: int, code: str | None, expected: type[QwBatchError]
) -> None:
    body: dict[str, Any] = {"request_id": "err-0002", "message": "the provider's words"}
    if code is not None:
        body["code"] = code
    with pytest.raises(expected) as caught:
        await make(Server(reply(status, body))).generate(req())
    error = caught.value
    assert type(error) is expected
    assert isinstance(error, ProviderError | ProviderTransientError)
    assert error.code == (code or f"HTTP{status}")
    assert (error.status_code, error.request_id) == (status, "err-0002")
    assert "the provider's words" in str(error)
    assert str(status) in str(error)


def test_classify_error_by_code_alone_for_a_failed_task() -> None:
    assert type(classify_error(None, "DataInspectionFailed", "x")) is ModerationError
    assert type(classify_error(None, "InternalError.Algo", "x")) is ProviderTransientError
    assert type(classify_error(None, "Whatever", "x")) is ProviderError


async def test_message_may_be_spelled_msg(make: Make) -> None:
    body = {"request_id": "err-3", "code": "InvalidApiKey", "msg": "Invalid API-key provided."}
    with pytest.raises(ProviderError, match=r"Invalid API-key provided\."):
        await make(Server(reply(401, body))).generate(req())


@pytest.mark.parametrize(
    ("status", "text", "expected"),
    [
        (502, "<html><body><h1>502 Bad Gateway</h1>\n</body></html>", ProviderTransientError),
        (503, "", ProviderTransientError),
        (400, "bad request", ProviderError),
        (500, "[1, 2]", ProviderTransientError),  # JSON, but not an object
    ],
)
async def test_non_json_error_bodies_map_cleanly(
    make: Make, status: int, text: str, expected: type[QwBatchError]
) -> None:
    with pytest.raises(expected) as caught:
        await make(Server(reply(status, text=text))).generate(req())
    assert type(caught.value) is expected
    assert caught.value.code == f"HTTP{status}"
    assert "\n" not in str(caught.value)


async def test_a_200_without_json_on_a_billed_call_is_ambiguous(make: Make) -> None:
    with pytest.raises(ProviderAmbiguousError):
        await make(Server(reply(200, text="<html>proxy</html>"))).generate(req())


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("7", 7.0), ("0.5", 0.5), (None, None), ("soon", None), ("-3", 0.0)],
)
async def test_throttling_carries_retry_after(
    make: Make, header: str | None, seconds: float | None
) -> None:
    headers = {"Retry-After": header} if header is not None else None
    body = {"request_id": "t-1", "code": "Throttling.RateQuota", "message": "Requests rate limit"}
    with pytest.raises(ThrottledError) as caught:
        await make(Server(reply(429, body, headers=headers))).generate(req())
    assert caught.value.retry_after == seconds


def test_retry_after_as_an_http_date() -> None:
    now = datetime(2026, 7, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(later, now=now) == 30.0
    earlier = format_datetime(now - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(earlier, now=now) == 0.0
    assert parse_retry_after("Wed, 99 Foo 2026 nonsense", now=now) is None
    assert parse_retry_after("nan") is None


async def test_retry_after_as_an_http_date_on_a_response(make: Make) -> None:
    future = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    body = {"code": "Throttling", "message": "slow down"}
    with pytest.raises(ThrottledError) as caught:
        await make(Server(reply(429, body, headers={"Retry-After": future}))).generate(req())
    assert caught.value.retry_after is not None
    assert 100 < caught.value.retry_after <= 120


# -- transport errors -----------------------------------------------------------------------

BEFORE_SEND = [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout]
AFTER_SEND = [
    httpx.ReadTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
    httpx.WriteTimeout,
]


@pytest.mark.parametrize("exc_type", BEFORE_SEND)
@pytest.mark.parametrize("method", ["generate", "submit_task"])
async def test_failure_before_sending_is_transient(
    make: Make, exc_type: type[httpx.TransportError], method: str
) -> None:
    provider = make(Server(exc_type("boom")))
    with pytest.raises(ProviderTransientError) as caught:
        await getattr(provider, method)(req())
    assert not isinstance(caught.value, AmbiguousError)
    assert caught.value.code == exc_type.__name__
    assert isinstance(caught.value.__cause__, exc_type)


@pytest.mark.parametrize("exc_type", AFTER_SEND)
@pytest.mark.parametrize("method", ["generate", "submit_task"])
async def test_failure_after_sending_a_billed_post_is_ambiguous(
    make: Make, exc_type: type[httpx.TransportError], method: str
) -> None:
    provider = make(Server(exc_type("boom")))
    with pytest.raises(ProviderAmbiguousError) as caught:
        await getattr(provider, method)(req())
    assert not isinstance(caught.value, TransientError)
    assert caught.value.code == exc_type.__name__
    assert "may have been billed" in str(caught.value)
    assert isinstance(caught.value.__cause__, exc_type)


@pytest.mark.parametrize("exc_type", BEFORE_SEND + AFTER_SEND)
async def test_transport_failure_on_a_download_is_transient(
    make: Make, exc_type: type[httpx.TransportError]
) -> None:
    with pytest.raises(ProviderTransientError) as caught:
        await make(Server(exc_type("boom"))).download(OSS_URL)
    assert caught.value.code == exc_type.__name__


async def test_unsupported_scheme_is_permanent(make: Make) -> None:
    with pytest.raises(ProviderError) as caught:
        await make(Server(httpx.UnsupportedProtocol("ftp"))).download("ftp://example.test/x.png")
    assert caught.value.code == "UnsupportedProtocol"


# -- submit_task ----------------------------------------------------------------------------


async def test_submit_task_sends_the_documented_async_body(make: Make) -> None:
    server = Server(reply(200, TASK_CREATED))
    request = req(model="qwen-image-plus", size="1664*928", negative_prompt="", prompt_extend=True)

    task_id = await make(server).submit_task(request)

    assert task_id == TASK_ID
    sent = server.last
    assert (sent.method, str(sent.url)) == ("POST", SYNTHESIS_URL)
    assert_api_headers(sent, async_task=True)
    assert body_of(sent) == {
        "model": "qwen-image-plus",
        "input": {"prompt": "a cat"},  # an empty negative prompt is not sent
        "parameters": {
            "size": "1664*928",
            "n": 1,
            "seed": 42,
            "prompt_extend": True,
            "watermark": False,
        },
    }


async def test_submit_task_puts_the_negative_prompt_in_input(make: Make) -> None:
    server = Server(reply(200, TASK_CREATED))
    await make(server).submit_task(req(model="qwen-image", negative_prompt="blurry"))
    assert body_of(server.last)["input"] == {"prompt": "a cat", "negative_prompt": "blurry"}
    assert "negative_prompt" not in body_of(server.last)["parameters"]


async def test_submit_task_without_a_task_id_is_ambiguous(make: Make) -> None:
    with pytest.raises(ProviderAmbiguousError):
        await make(Server(reply(200, {"output": {}, "request_id": "x"}))).submit_task(req())


async def test_submit_task_errors_are_classified(make: Make) -> None:
    body = {"request_id": "e", "code": "Arrearage", "message": "Access denied, account in arrears"}
    with pytest.raises(ProviderError) as caught:
        await make(Server(reply(400, body))).submit_task(req())
    assert caught.value.code == "Arrearage"


# -- wait_task ------------------------------------------------------------------------------


async def test_wait_task_polls_through_pending_and_running(make: Make, fake_time: FakeTime) -> None:
    server = Server(
        reply(200, task("PENDING")),
        reply(200, task("RUNNING")),
        reply(200, task("RUNNING")),
        reply(200, task("RUNNING")),
        reply(200, task("RUNNING")),
        reply(200, TASK_OK),
    )

    result = await make(server).wait_task(TASK_ID)

    assert len(server.requests) == 6
    for sent in server.requests:
        assert (sent.method, str(sent.url)) == ("GET", f"{BASE}/tasks/{TASK_ID}")
        assert_api_headers(sent)
        assert sent.content == b""
    assert fake_time.sleeps == [1.0, 2.0, 4.0, 4.0, 4.0]  # doubling, capped at the max
    assert result.images == (ProviderImage(OSS_URL, 0),)
    assert result.task_id == TASK_ID
    assert result.request_id == "7434edb2-0001"
    assert result.actual_prompt == "a cat, rewritten"
    assert result.billed_images == 1
    assert result.item_errors == ()


@pytest.mark.parametrize("status", [503, 504, 429, 500])
async def test_wait_task_keeps_polling_through_server_trouble(
    make: Make, fake_time: FakeTime, status: int
) -> None:
    server = Server(
        reply(200, task("RUNNING")),
        reply(status, {"code": "Throttling"} if status == 429 else None, text=None),
        reply(status, text="Service Unavailable"),
        reply(200, TASK_OK),
    )
    result = await make(server).wait_task(TASK_ID)
    assert result.billed_images == 1
    assert fake_time.sleeps == [1.0, 2.0, 4.0]


async def test_wait_task_honours_retry_after_while_polling(make: Make, fake_time: FakeTime) -> None:
    throttled = reply(429, {"code": "Throttling.RateQuota"}, headers={"Retry-After": "30"})
    server = Server(throttled, reply(200, TASK_OK))
    await make(server).wait_task(TASK_ID)
    assert fake_time.sleeps == [30.0]


@pytest.mark.parametrize("failure", [httpx.ReadTimeout("slow"), httpx.ConnectError("down")])
async def test_wait_task_keeps_polling_through_transport_errors(
    make: Make, failure: Exception
) -> None:
    result = await make(Server(failure, reply(200, TASK_OK))).wait_task(TASK_ID)
    assert result.task_id == TASK_ID


async def test_wait_task_keeps_polling_through_a_non_json_200(make: Make) -> None:
    server = Server(reply(200, text="<html>"), reply(200, TASK_OK))
    assert (await make(server).wait_task(TASK_ID)).billed_images == 1


async def test_wait_task_stops_on_a_permanent_poll_error(make: Make) -> None:
    server = Server(reply(401, {"code": "InvalidApiKey", "message": "Invalid API-key provided."}))
    with pytest.raises(ProviderError) as caught:
        await make(server).wait_task(TASK_ID)
    assert caught.value.code == "InvalidApiKey"
    assert len(server.requests) == 1


async def test_unknown_task_is_expired(make: Make) -> None:
    with pytest.raises(ResultExpiredError) as caught:
        await make(Server(reply(200, task("UNKNOWN")))).wait_task(TASK_ID)
    assert TASK_ID in str(caught.value)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("InvalidParameter", ProviderError),
        ("DataInspectionFailed", ModerationError),
        ("InternalError.Algo", ProviderTransientError),
        (None, ProviderError),
    ],
)
async def test_failed_task_raises_its_code(
    make: Make, code: str | None, expected: type[QwBatchError]
) -> None:
    output: dict[str, Any] = {"message": "Task failed for a reason"}
    if code is not None:
        output["code"] = code
    with pytest.raises(expected) as caught:
        await make(Server(reply(200, task("FAILED", **output)))).wait_task(TASK_ID)
    assert type(caught.value) is expected
    assert caught.value.code == (code or "TaskFailed")
    assert "Task failed for a reason" in str(caught.value)
    assert TASK_ID in str(caught.value)


async def test_canceled_task_is_permanent(make: Make) -> None:
    with pytest.raises(ProviderError) as caught:
        await make(Server(reply(200, task("CANCELED")))).wait_task(TASK_ID)
    assert type(caught.value) is ProviderError
    assert caught.value.code == "TaskCanceled"


@pytest.mark.parametrize(
    ("usage", "billed"),
    [({"image_count": 2}, 2), ({"output_image_count": 2}, 2), (None, 2)],
)
async def test_partial_failure_in_a_task_keeps_good_images_and_item_errors(
    make: Make, usage: dict[str, int] | None, billed: int
) -> None:
    second = OSS_URL.replace("xxx", "zzz")
    answer = task(
        "SUCCEEDED",
        results=[
            {"url": OSS_URL, "actual_prompt": "rewritten"},
            {"code": "DataInspectionFailed", "message": "Output data may contain inappropriate"},
            {"url": second},
        ],
    )
    if usage is not None:
        answer["usage"] = usage

    result = await make(Server(reply(200, answer))).wait_task(TASK_ID)

    assert result.images == (ProviderImage(OSS_URL, 0), ProviderImage(second, 1))
    assert result.item_errors == (
        ("DataInspectionFailed", "Output data may contain inappropriate"),
    )
    assert result.billed_images == billed
    assert result.actual_prompt == "rewritten"


async def test_wait_task_gives_up_at_the_deadline_without_cancelling(
    make: Make, fake_time: FakeTime
) -> None:
    server = Server(reply(200, task("RUNNING")))
    provider = make(server, task_deadline_s=10.0)

    with pytest.raises(TaskDeadlineError) as caught:
        await provider.wait_task(TASK_ID)

    error = caught.value
    assert isinstance(error, ProviderTransientError)
    assert error.task_id == TASK_ID
    assert error.code == "TaskDeadlineExceeded"
    assert TASK_ID in str(error)
    assert sum(fake_time.sleeps) == pytest.approx(10.0)
    assert fake_time.sleeps == [1.0, 2.0, 4.0, 3.0]  # the last sleep ends at the deadline
    assert {(r.method, r.url.path) for r in server.requests} == {
        ("GET", f"/api/v1/tasks/{TASK_ID}")
    }


# -- download -------------------------------------------------------------------------------


async def test_download_returns_the_bytes_without_our_key(make: Make) -> None:
    server = Server(
        httpx.Response(200, content=b"\x89PNG...", headers={"Content-Type": "image/png"})
    )
    # Even a client that carries the key by default must not hand it to OSS.
    provider = make(server, client_headers={"Authorization": f"Bearer {KEY}"})

    assert await provider.download(OSS_URL) == b"\x89PNG..."

    sent = server.last
    assert (sent.method, str(sent.url)) == ("GET", OSS_URL)
    assert "authorization" not in sent.headers
    assert "x-dashscope-workspace" not in sent.headers
    assert KEY not in str(sent.headers.raw)


@pytest.mark.parametrize(
    ("status", "text"),
    [(403, OSS_EXPIRED), (404, "NoSuchKey"), (410, ""), (400, OSS_EXPIRED)],
)
async def test_expired_download(make: Make, status: int, text: str) -> None:
    with pytest.raises(ResultExpiredError) as caught:
        await make(Server(reply(status, text=text))).download(OSS_URL)
    assert caught.value.status_code == status
    assert "Signature" not in str(caught.value)  # the signed query stays out of messages


@pytest.mark.parametrize(
    ("status", "expected"), [(500, TransientError), (503, TransientError), (400, PermanentError)]
)
async def test_other_download_failures(
    make: Make, status: int, expected: type[QwBatchError]
) -> None:
    with pytest.raises(expected) as caught:
        await make(Server(reply(status, text="oops"))).download(OSS_URL)
    assert not isinstance(caught.value, ResultExpiredError)


# -- construction and secrets ---------------------------------------------------------------


def test_repr_hides_the_key() -> None:
    provider = DashScopeProvider(
        client=httpx.AsyncClient(), base_url=BASE, api_key=KEY, workspace_id="ws-1"
    )
    assert KEY not in repr(provider)
    assert "hidden" in repr(provider)
    assert "ws-1" in repr(provider)


async def test_from_settings_builds_the_client_and_base_url() -> None:
    settings = Settings(region="singapore", dashscope_api_key=SecretStr(KEY))
    async with DashScopeProvider.from_settings(settings) as provider:
        assert "dashscope-intl.aliyuncs.com/api/v1" in repr(provider)
        assert KEY not in repr(provider)
        client = provider._client
        assert client.timeout == httpx.Timeout(connect=10.0, read=300.0, write=60.0, pool=30.0)
    assert client.is_closed


async def test_from_settings_uses_a_given_client_and_leaves_it_open() -> None:
    server = Server(reply(200, SYNC_OK))
    settings = Settings(
        dashscope_base_url="https://ws-1.ap-southeast-1.maas.test/api/v1/",
        dashscope_api_key=SecretStr(KEY),
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as client:
        async with DashScopeProvider.from_settings(settings, client=client) as provider:
            await provider.generate(req())
        assert not client.is_closed
    assert str(server.last.url) == (
        "https://ws-1.ap-southeast-1.maas.test/api/v1/services/aigc/multimodal-generation/generation"
    )
    assert server.last.headers["authorization"] == f"Bearer {KEY}"


# Every error path, each fed the key wherever a server or httpx could echo it.
ECHO = {"request_id": "e", "code": "InvalidApiKey", "message": f"Invalid API-key provided: {KEY}"}
SECRET_CASES: list[tuple[str, list[httpx.Response | Exception]]] = [
    ("generate", [reply(401, ECHO)]),
    ("generate", [reply(400, {"code": "InvalidParameter", "msg": f"bad {KEY}"})]),
    ("generate", [reply(200, {"code": "DataInspectionFailed", "message": KEY})]),
    ("generate", [reply(502, text=f"<html>{KEY}</html>")]),
    ("generate", [reply(429, {"code": "Throttling", "message": KEY})]),
    ("generate", [reply(200, text=f"garbage {KEY}")]),
    ("generate", [httpx.ConnectError(f"connect failed, headers: Bearer {KEY}")]),
    ("generate", [httpx.ReadTimeout(f"timed out, Authorization: Bearer {KEY}")]),
    ("submit_task", [reply(403, {"code": "AccessDenied", "message": KEY})]),
    ("submit_task", [httpx.RemoteProtocolError(KEY)]),
    ("submit_task", [reply(200, {"output": {}})]),
    ("wait_task", [reply(200, task("FAILED", code="InvalidParameter", message=KEY))]),
    ("wait_task", [reply(200, task("UNKNOWN"))]),
    ("wait_task", [reply(200, task("CANCELED"))]),
    ("wait_task", [reply(401, ECHO)]),
    ("wait_task", [httpx.ReadTimeout(KEY), reply(200, task("RUNNING"))]),  # to the deadline
    ("download", [reply(403, text=OSS_EXPIRED)]),
    ("download", [reply(500, text="oops")]),
    ("download", [reply(400, text="bad")]),
    ("download", [httpx.ReadError(KEY)]),
]


@pytest.mark.parametrize(("method", "answers"), SECRET_CASES)
async def test_the_key_never_appears_in_errors_or_logs(
    make: Make,
    caplog: pytest.LogCaptureFixture,
    method: str,
    answers: list[httpx.Response | Exception],
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = make(Server(*answers))
    argument: Any = {
        "generate": req(),
        "submit_task": req(),
        "wait_task": TASK_ID,
        "download": OSS_URL,
    }[method]
    with pytest.raises((ProviderError, ProviderTransientError, ProviderAmbiguousError)) as caught:
        await getattr(provider, method)(argument)
    error = caught.value
    assert KEY not in str(error)
    assert KEY not in repr(error)
    assert KEY not in str(error.args)
    assert KEY not in repr(provider)
    assert KEY not in caplog.text
