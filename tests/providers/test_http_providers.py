"""What the FLUX (BFL) and GPT Image (OpenAI) clients share, on scripted answers: how an HTTP
answer maps onto the error tree, how a BFL task is polled, and who closes the client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from support import make_request

from qwbatch.core.errors import (
    ProviderAmbiguousError,
    ProviderError,
    ProviderTransientError,
    ResultExpiredError,
    TaskDeadlineError,
    ThrottledError,
)
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.core.types import ProviderImage, RenderRequest
from qwbatch.providers.bfl import BflProvider
from qwbatch.providers.dashscope import DashScopeProvider
from qwbatch.providers.openai import OpenAIProvider

pytestmark = pytest.mark.anyio
TABLE = ModelTable.load()
KEY = "sk-shared-http-SECRET-7"
BFL = "https://api.bfl.ai"
OPENAI = "https://api.openai.test/v1"
POLL = f"{BFL}/v1/get_result?id=t-1"
HANDLE = f"t-1|2.5|{POLL}"
WAIT_3 = {"Retry-After": "3"}
WAIT_7 = {"Retry-After": "7"}
SAMPLE = "https://delivery.bfl.ai/results/t-1/sample.png?se=2030&sig=SIGNED"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Script:
    """The answers a MockTransport gives, in order (the last one again and again), and the
    requests it saw; the clock moves only when the provider sleeps."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers)
        self.seen: list[httpx.Request] = []
        self.now = 50.0
        self.slept: list[float] = []

    def answer(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        first = self.answers[0]
        if len(self.answers) > 1:
            self.answers.pop(0)
        return httpx.Response(first.status_code, headers=first.headers, content=first.content)

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


Build = Callable[..., Any]


@pytest.fixture
async def clients() -> AsyncIterator[Callable[[Script], httpx.AsyncClient]]:
    made: list[httpx.AsyncClient] = []

    def client_for(script: Script) -> httpx.AsyncClient:
        made.append(httpx.AsyncClient(transport=httpx.MockTransport(script.answer)))
        return made[-1]

    yield client_for
    for client in made:
        await client.aclose()


@pytest.fixture
def bfl(clients: Callable[[Script], httpx.AsyncClient]) -> Build:
    def build(script: Script, **knobs: Any) -> BflProvider:
        return BflProvider(
            client=clients(script),
            base_url=BFL,
            api_key=KEY,
            table=TABLE,
            poll_interval_s=1.0,
            poll_max_interval_s=4.0,
            sleep=script.sleep,
            clock=script.clock,
            **knobs,
        )

    return build


@pytest.fixture
def gpt(clients: Callable[[Script], httpx.AsyncClient]) -> Build:
    def build(script: Script) -> OpenAIProvider:
        return OpenAIProvider(client=clients(script), base_url=OPENAI, api_key=KEY, table=TABLE)

    return build


def req(model: str = "flux-2-pro") -> RenderRequest:
    return make_request("r1", "a kite", model=model, size="1024*1024", seed=7)


def json_answer(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def text_answer(status: int, text: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, text=text, headers=headers)


# -- BFL: answers to a submission ------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "error", "code", "retry_after"),
    [
        (json_answer(429, {"detail": "busy"}, WAIT_3), ThrottledError, "ActiveTaskLimit", 3.0),
        (json_answer(503, {"detail": "down"}, WAIT_7), ProviderTransientError, "HTTP503", 7.0),
        (json_answer(408, {"detail": "slow"}), ProviderTransientError, "HTTP408", None),
    ],
)
async def test_bfl_submit_answers_that_may_pass_are_transient(
    bfl: Build, answer: httpx.Response, error: type[Exception], code: str, retry_after: float | None
) -> None:
    with pytest.raises(ProviderTransientError) as caught:
        await bfl(Script(answer)).submit_task(req())
    assert type(caught.value) is error
    assert (caught.value.code, caught.value.retry_after) == (code, retry_after)
    assert caught.value.status_code == answer.status_code


async def test_bfl_refusals_are_permanent_and_name_no_key(bfl: Build) -> None:
    detail = [{"loc": ["body", "prompt"], "msg": f"field required (key {KEY})"}]
    with pytest.raises(ProviderError) as caught:
        await bfl(Script(json_answer(422, {"detail": detail}))).submit_task(req())
    assert (caught.value.code, caught.value.status_code) == ("ValidationError", 422)
    assert "prompt: field required" in caught.value.message
    assert KEY not in str(caught.value)
    with pytest.raises(ProviderError) as denied:
        await bfl(Script(json_answer(401, {"message": "bad key"}))).submit_task(req())
    assert denied.value.code == "HTTP401"
    assert not isinstance(denied.value, ResultExpiredError)
    assert denied.value.account_wide  # every row alike: unrendered, counted by the breaker
    assert not caught.value.account_wide


@pytest.mark.parametrize("status", [401, 403])
async def test_gpt_a_refused_key_or_account_is_account_wide(gpt: Build, status: int) -> None:
    body = {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}
    with pytest.raises(ProviderError) as caught:
        await gpt(Script(json_answer(status, body))).generate(req("gpt-image-2"))
    assert caught.value.status_code == status
    assert caught.value.account_wide
    assert KEY not in str(caught.value)


@pytest.mark.parametrize("answer", [text_answer(200, "<html>ok</html>"), json_answer(200, {})])
async def test_bfl_a_submission_answered_unreadably_is_ambiguous(
    bfl: Build, answer: httpx.Response
) -> None:
    with pytest.raises(ProviderAmbiguousError):
        await bfl(Script(answer)).submit_task(req())


# -- BFL: polling ----------------------------------------------------------------------------

READY = {"status": "Ready", "result": {"sample": SAMPLE, "width": 1024, "height": 1024}}


async def test_bfl_failed_polls_are_polled_again_doubling_to_the_max(bfl: Build) -> None:
    script = Script(
        json_answer(503, {"detail": "down"}),
        text_answer(200, "not json"),
        json_answer(200, {"status": "Pending"}),
        json_answer(200, {"status": "Pending"}),
        json_answer(200, READY),
    )
    result = await bfl(script).wait_task(HANDLE)
    assert result.images == (ProviderImage(url=SAMPLE, index=0),)
    assert (result.task_id, result.cost, result.width) == ("t-1", 0.025, 1024)
    assert script.slept == [1.0, 2.0, 4.0, 4.0]
    assert {str(request.url) for request in script.seen} == {POLL}
    assert all(request.headers["x-key"] == KEY for request in script.seen)


async def test_bfl_a_poll_that_asks_to_wait_longer_is_honoured(bfl: Build) -> None:
    script = Script(json_answer(429, {"detail": "slow down"}, WAIT_3))
    script.answers.append(json_answer(200, READY))
    await bfl(script).wait_task(HANDLE)
    assert script.slept == [3.0]


async def test_bfl_wait_gives_up_at_the_deadline(bfl: Build) -> None:
    script = Script(json_answer(200, {"status": "Pending"}))
    with pytest.raises(TaskDeadlineError) as caught:
        await bfl(script, task_deadline_s=10.0).wait_task(HANDLE)
    assert caught.value.task_id == HANDLE  # the whole handle: a resumed run polls it again
    assert caught.value.code == "TaskDeadlineExceeded"
    assert "task t-1 had not ended after 10 s (status Pending)" in caught.value.message
    assert script.slept == [1.0, 2.0, 4.0, 3.0]  # the last sleep ends at the deadline


async def test_bfl_an_unknown_task_is_expired(bfl: Build) -> None:
    with pytest.raises(ResultExpiredError) as caught:
        await bfl(Script(json_answer(404, {"detail": "Task not found"}))).wait_task(HANDLE)
    assert caught.value.code == "TaskNotFound"


def test_bfl_poll_intervals_are_checked() -> None:
    client = httpx.AsyncClient()
    with pytest.raises(ValueError, match="poll_interval_s"):
        BflProvider(client=client, base_url=BFL, api_key=KEY, table=TABLE, poll_interval_s=0)
    with pytest.raises(ValueError, match="deadline"):
        BflProvider(client=client, base_url=BFL, api_key=KEY, table=TABLE, task_deadline_s=0)


# -- downloads -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "code"),
    [
        (404, ResultExpiredError, "ResultExpired"),
        (403, ResultExpiredError, "ResultExpired"),
        (503, ProviderTransientError, "HTTP503"),
        (429, ProviderTransientError, "HTTP429"),
        (400, ProviderError, "HTTP400"),
    ],
)
async def test_bfl_download_failures(
    bfl: Build, status: int, error: type[Exception], code: str
) -> None:
    script = Script(text_answer(status, "<Error>nope</Error>", {"Retry-After": "2"}))
    with pytest.raises((ProviderError, ProviderTransientError)) as caught:
        await bfl(script).download(SAMPLE)
    assert type(caught.value) is error
    assert caught.value.code == code
    assert "sig=" not in str(caught.value)  # the signed query stays out
    assert "x-key" not in script.seen[0].headers  # downloads carry no key
    if isinstance(caught.value, ProviderTransientError):
        assert caught.value.retry_after == 2.0


@pytest.mark.parametrize(("status", "error"), [(503, ProviderTransientError), (404, ProviderError)])
async def test_gateway_download_failures(gpt: Build, status: int, error: type[Exception]) -> None:
    script = Script(text_answer(status, "nope"))
    with pytest.raises((ProviderError, ProviderTransientError)) as caught:
        await gpt(script).download("https://gateway.test/out/1.png?token=SIGNED")
    assert type(caught.value) is error
    assert caught.value.code == f"HTTP{status}"  # as every provider's downloads
    assert "token=" not in str(caught.value)
    assert "authorization" not in script.seen[0].headers


# -- OpenAI: answers to a call ---------------------------------------------------------------


def openai_error(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"error": {"code": code, "message": f"{code} for key {KEY}", "type": "x"}}
    return json_answer(status, body, {"x-request-id": "req-9", **(headers or {})})


@pytest.mark.parametrize(
    ("answer", "error", "retry_after"),
    [
        (openai_error(429, "rate_limit_exceeded", {"retry-after-ms": "1500"}), ThrottledError, 1.5),
        (openai_error(429, "rate_limit_exceeded", {"retry-after": "4"}), ThrottledError, 4.0),
        (openai_error(503, "slow_down"), ThrottledError, None),
        (openai_error(500, "server_error"), ProviderTransientError, None),
        (openai_error(408, "timeout"), ProviderTransientError, None),
    ],
)
async def test_openai_answers_that_may_pass_are_transient(
    gpt: Build, answer: httpx.Response, error: type[Exception], retry_after: float | None
) -> None:
    with pytest.raises(ProviderTransientError) as caught:
        await gpt(Script(answer)).generate(req("gpt-image-2"))
    assert type(caught.value) is error
    assert caught.value.retry_after == retry_after
    assert caught.value.request_id == "req-9"
    assert KEY not in str(caught.value)


async def test_openai_refusals_and_unreadable_answers(gpt: Build) -> None:
    with pytest.raises(ProviderError) as caught:
        await gpt(Script(openai_error(400, "invalid_size"))).generate(req("gpt-image-2"))
    assert (caught.value.code, caught.value.status_code) == ("invalid_size", 400)
    assert KEY not in str(caught.value)
    with pytest.raises(ProviderAmbiguousError):
        await gpt(Script(text_answer(200, "<html></html>"))).generate(req("gpt-image-2"))


# -- the client: made from settings (and closed), or handed in (and left open) ---------------


@pytest.mark.parametrize(
    "make",
    [
        lambda s, c: BflProvider.from_settings(s, TABLE, c),
        lambda s, c: OpenAIProvider.from_settings(s, TABLE, c),
        lambda s, c: DashScopeProvider.from_settings(s, c),
    ],
    ids=["bfl", "openai", "dashscope"],
)
async def test_a_provider_closes_only_the_client_it_made(make: Build) -> None:
    settings = Settings(connect_timeout_s=3.0, read_timeout_s=40.0, http_transport="httpcore")
    async with make(settings, None) as provider:
        made = provider._client
        assert made.timeout == httpx.Timeout(connect=3.0, read=40.0, write=60.0, pool=30.0)
        assert KEY not in repr(provider)
    assert made.is_closed
    async with httpx.AsyncClient() as given:
        async with make(settings, given):
            pass
        assert not given.is_closed
