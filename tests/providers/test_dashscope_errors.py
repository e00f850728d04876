"""DashScopeProvider's failures against ``httpx.MockTransport``: each documented error mapped
to its class (§5), transport errors before and after sending, construction, and the key kept
out of every error and log line."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from dashscope_helpers import (
    BASE,
    OSS_EXPIRED,
    OSS_URL,
    SYNC_OK,
    TASK_ID,
    Make,
    Server,
    reply,
    req,
    task,
)
from pydantic import SecretStr
from support import KEY

from qwbatch.core.errors import (
    AmbiguousError,
    ModerationError,
    ProviderAmbiguousError,
    ProviderError,
    ProviderTransientError,
    QwBatchError,
    ThrottledError,
    TransientError,
)
from qwbatch.core.settings import Settings
from qwbatch.providers.dashscope import DashScopeProvider, classify_error, parse_retry_after

pytestmark = pytest.mark.anyio


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
