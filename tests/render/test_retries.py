"""The classification table, row by row; the retry policy (full jitter, Retry-After, caps);
and the engine applying both against the simulator: attempts counted in the catalog."""

from __future__ import annotations

import random
import socket

import httpx
import pytest
import support
from render_helpers import render
from support import simple_request as make_request

from qwbatch.core.errors import (
    ModerationError,
    ProviderError,
    ProviderTransientError,
    ThrottledError,
    TransientError,
)
from qwbatch.core.settings import Settings
from qwbatch.core.types import CatalogRecord, PlanItem
from qwbatch.limits import LimiterRegistry
from qwbatch.providers.dashscope import DashScopeProvider
from qwbatch.providers.dashscope_errors import ERROR_TABLE, classify_error, error_kind
from qwbatch.render.retries import RetryPolicy

# (HTTP status, code, message, kind, row of ERROR_TABLE that decides; None: no row, the default)
EXAMPLES = [
    (400, "DataInspectionFailed", "Input data may contain inappropriate content.", "moderated", 0),
    (429, "Throttling", "Requests throttling triggered.", "throttled", 1),
    (429, "Throttling.RateQuota", "Requests rate limit exceeded.", "throttled", 1),
    (429, "Throttling.AllocationQuota", "Allocated quota exceeded.", "throttled", 1),
    (429, "Throttling.BurstRate", "Request rate increased too quickly.", "throttled", 1),
    (429, None, "Request rate increased too quickly, please slow down", "throttled", 2),
    (500, "InternalError", "An internal error has occured.", "transient", 3),
    (500, "InternalError.Algo", "Inner error.", "transient", 3),
    (408, "RequestTimeOut", "Request timed out.", "transient", 4),
    (400, "InvalidParameter", "size must be W*H", "permanent", 5),
    (400, "InvalidParameter.DataInspection", "format not supported", "permanent", 5),
    (400, "BadRequest.EmptyInput", "input is empty", "permanent", 5),
    (400, "InvalidURL", "Requested URL is invalid.", "permanent", 5),
    (400, "Arrearage", "Access denied, please make sure your account is in good standing.",
     "permanent", 5),
    (401, "InvalidApiKey", "Invalid API-key provided.", "permanent", 5),
    (403, "AccessDenied", "Access denied.", "permanent", 5),
    (403, "AccessDenied.Unpurchased", "not purchased", "permanent", 5),
    (403, "Model.AccessDenied", "no access to the model", "permanent", 5),
    (403, "AllocationQuota.FreeTierOnly", "Free quota exhausted.", "permanent", 5),
    (429, "SomethingNew", "Free quota exhausted.", "permanent", 6),
    (429, None, "slow down", "throttled", 7),
    (503, None, "<html>503 Service Temporarily Unavailable</html>", "transient", 8),
    (502, "SomethingNew", "bad gateway", "transient", 8),
    (408, None, "timeout", "transient", 8),
    (404, None, "not found", "permanent", None),
    (None, "TaskFailed", "no status: a failed task", "permanent", None),
]  # fmt: skip

CLASS_OF = {
    "throttled": ThrottledError,
    "transient": ProviderTransientError,
    "moderated": ModerationError,
    "permanent": ProviderError,
}


@pytest.mark.parametrize(("status", "code", "message", "kind", "row"), EXAMPLES)
def test_each_row_of_the_table(
    status: int | None, code: str | None, message: str, kind: str, row: int | None
) -> None:
    assert error_kind(status, code, message) == kind
    deciding = next(
        (i for i, rule in enumerate(ERROR_TABLE) if rule.matches(status, code or "", message)),
        None,
    )
    assert deciding == row
    error = classify_error(status, code, message, request_id="req-1", retry_after=2.5)
    assert type(error) is CLASS_OF[kind]
    # Retried exactly when the table says so; the code and message are kept for the catalog.
    assert isinstance(error, TransientError) == (kind in ("throttled", "transient"))
    assert error.code == (code or f"HTTP{status}")
    assert message in error.message
    assert error.request_id == "req-1"
    if isinstance(error, ProviderTransientError):
        assert error.retry_after == 2.5


def test_every_row_of_the_table_has_an_example() -> None:
    assert {row for *_, row in EXAMPLES} >= set(range(len(ERROR_TABLE)))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_connection_refused_before_sending_is_transient() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with httpx.AsyncClient() as client:
        provider = DashScopeProvider(
            client=client, base_url=f"http://127.0.0.1:{port}/api/v1", api_key="sk-x"
        )
        with pytest.raises(ProviderTransientError) as caught:
            await provider.generate(make_request())
    assert caught.value.code == "ConnectError"
    assert "before the request was sent" in caught.value.message


def test_backoff_is_full_jitter_capped_and_at_least_retry_after() -> None:
    policy = RetryPolicy(max_attempts=10, base_s=2.0, cap_s=60.0, max_total_s=1e9)
    rng = random.Random(7)
    for attempt, ceiling in ((1, 2.0), (2, 4.0), (3, 8.0), (6, 60.0), (40, 60.0)):
        waits = [policy.backoff(attempt, rng=rng) for _ in range(2000)]
        assert 0.0 <= min(waits) < ceiling * 0.05  # full jitter reaches down to zero
        assert ceiling * 0.95 < max(waits) <= ceiling
    assert all(policy.backoff(1, retry_after=30.0, rng=rng) >= 30.0 for _ in range(100))


def test_retries_stop_at_max_attempts_and_at_max_total_time() -> None:
    policy = RetryPolicy(max_attempts=3, base_s=1.0, cap_s=1.0, max_total_s=10.0)
    assert policy.next_wait(1, elapsed_s=0.0) is not None
    assert policy.next_wait(3, elapsed_s=0.0) is None  # three attempts made: done
    assert policy.next_wait(1, elapsed_s=9.5, retry_after=1.0) is None  # would pass 10 s
    assert policy.next_wait(1, elapsed_s=8.0, retry_after=1.0) == pytest.approx(1.0)


# -- the engine applies it, against the simulator ----------------------------------------------


def run_engine(sim, tmp_path, settings: Settings, prompts: list[str]) -> list[CatalogRecord]:
    """Render ``prompts`` through a fresh limiter registry (a Retry-After pause stays here)."""
    items = [PlanItem(make_request(p, row_id=f"r{i}")) for i, p in enumerate(prompts)]
    limiters = LimiterRegistry()
    return render(items, settings, tmp_path, run_id="retries", write_part=False, limiters=limiters)


def engine_settings(sim, **changes: object) -> Settings:
    """The shared settings with no shared limits: a Retry-After pause stays in this module's
    own limiter registry."""
    return support.engine_settings(sim, shared_limits="off", **changes)


def test_throttled_requests_are_retried_and_their_attempts_recorded(sim, tmp_path) -> None:
    sim.configure(rps_by_model={"qwen-image-2.0": 4.0}, burst=1, retry_after_s=0.05)
    prompts = [f"throttled {i}" for i in range(6)]
    records = run_engine(sim, tmp_path, engine_settings(sim, max_attempts=30), prompts)
    assert all(r.status == "succeeded" for r in records)
    ledger = sim.ledger()
    assert ledger["billed_images"] == 6
    # Every 429 was one more attempt of some request, and the catalog counts them all.
    assert sum(r.attempts for r in records) == 6 + ledger["throttled"]


def test_a_server_error_that_persists_stops_at_max_attempts(sim, tmp_path) -> None:
    sim.configure(error_5xx_rate=1.0)
    records = run_engine(sim, tmp_path, engine_settings(sim, max_attempts=3), ["failing"])
    [record] = records
    assert record.status == "failed"
    assert record.attempts == 3
    assert record.error_code in ("InternalError", "HTTP503")


def test_a_request_is_not_retried_past_its_total_time(sim, tmp_path) -> None:
    # A server error, a wait of up to 1 s against a budget of a microsecond: no retry.
    sim.configure(error_5xx_rate=1.0)
    settings = engine_settings(
        sim, max_attempts=50, max_request_s=1e-6, backoff_base_s=1.0, backoff_max_s=1.0
    )
    [failed] = run_engine(sim, tmp_path, settings, ["first"])
    assert failed.status == "failed"
    assert failed.attempts == 1


def test_a_throttled_request_is_never_failed_for_being_throttled(sim, tmp_path) -> None:
    # Half the answers are 429s (seeded dice): far more 429s than the attempt cap of 2 or the
    # time budget allow a request, and every row succeeds.
    sim.configure(throttle_rate=0.5, retry_after_s=0.01)
    settings = engine_settings(sim, max_attempts=2, max_request_s=0.05)
    prompts = [f"throttled {i}" for i in range(12)]
    records = run_engine(sim, tmp_path, settings, prompts)
    assert [r.status for r in records] == ["succeeded"] * 12
    assert max(r.attempts for r in records) > 2
    assert sum(r.attempts for r in records) == 12 + sim.ledger()["throttled"]


def test_errors_other_than_429_still_stop_at_the_attempt_cap_between_429s(sim, tmp_path) -> None:
    sim.configure(throttle_rate=0.5, error_5xx_rate=0.5, retry_after_s=0.01)
    settings = engine_settings(sim, max_attempts=1)
    records = run_engine(sim, tmp_path, settings, [f"mixed {i}" for i in range(12)])
    failed = [r for r in records if r.status == "failed"]
    assert failed  # a 5xx ends a request at once with max_attempts=1
    assert not any((r.error_code or "").startswith("Throttling") for r in failed)


def test_moderation_is_recorded_without_a_retry(sim, tmp_path) -> None:
    records = run_engine(sim, tmp_path, engine_settings(sim), ["a __moderate__ prompt"])
    [record] = records
    assert (record.status, record.attempts, record.error_code) == (
        "moderated",
        1,
        "DataInspectionFailed",
    )
    assert sim.ledger()["requests"]["generation"] == 1
