"""DashScopeProvider against ``httpx.MockTransport`` answering with the documented shapes:
what each call sends and how it reads the answers (generate, submit_task, wait_task,
download).

Every response body here is copied from ``docs/providers/dashscope.md`` (§4.1–§4.4, §5); every
request is checked down to its URL, headers and JSON body."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from dashscope_helpers import (
    BASE,
    GENERATION_URL,
    OSS_EXPIRED,
    OSS_URL,
    SYNC_OK,
    SYNTHESIS_URL,
    TASK_CREATED,
    TASK_ID,
    TASK_OK,
    FakeTime,
    Make,
    Server,
    assert_api_headers,
    body_of,
    reply,
    req,
    task,
)
from support import KEY

from qwbatch.core.errors import (
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
from qwbatch.core.types import ProviderImage

pytestmark = pytest.mark.anyio


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
