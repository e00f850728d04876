"""Limits shared through Prefect global concurrency limits, against a real Prefect server
(the session harness): created by the run, leased strictly, given back, or local with a
clear log line when no shared limit can be had."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from qwbatch.limits import LimitSpec, ModelLimiter
from qwbatch.limits.shared import (
    IDLE_RELEASE_S,
    SLOTS_PER_REQUEST,
    PrefectBudget,
    bucket_slots,
    lease_size,
    limit_names,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def scope() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def shared_limiter(scope: str, spec: LimitSpec) -> tuple[ModelLimiter, PrefectBudget]:
    budget = PrefectBudget(scope=scope, model="qwen-image-2.0", spec=spec)
    return ModelLimiter(spec, name="qwen-image-2.0", shared=budget), budget


async def until(predicate, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def hold(limiter: ModelLimiter, seconds: float = 0.0) -> None:
    async with limiter.slot():
        await asyncio.sleep(seconds)


def test_lease_and_bucket_sizes_follow_the_rate() -> None:
    # A quarter second of traffic a lease; the limit holds one lease and half of another.
    assert (lease_size(20), bucket_slots(20)) == (5, 750)
    assert (lease_size(2), bucket_slots(2)) == (1, 150)
    assert (lease_size(0.3), bucket_slots(0.3)) == (1, 150)
    assert (lease_size(500), bucket_slots(500)) == (125, 18750)


def test_limit_names_name_the_model_and_the_account() -> None:
    rate, in_flight = limit_names("dashscope-intl.aliyuncs.com", "qwen-image-2.0")
    assert rate == "qwbatch-rps:qwen-image-2.0@dashscope-intl.aliyuncs.com"
    assert in_flight == "qwbatch-inflight:qwen-image-2.0@dashscope-intl.aliyuncs.com"
    assert "/" not in limit_names("a/b%c", "m")[0]  # Prefect refuses these characters


@pytest.mark.anyio
async def test_the_run_creates_its_limits_and_leases_rate_tokens(prefect_server, scope) -> None:
    spec = LimitSpec(rps=40, max_in_flight=6, ramp_s=0)
    limiter, budget = shared_limiter(scope, spec)
    try:
        await asyncio.gather(*(hold(limiter, 0.01) for _ in range(30)))
        assert budget.state == "shared"
        assert budget.leases_taken >= 30 // budget.lease
        assert "shared via Prefect limit" in limiter.describe_sharing()
        async with get_client() as client:
            rate = await client.read_global_concurrency_limit_by_name(budget.rate_name)
            in_flight = await client.read_global_concurrency_limit_by_name(budget.inflight_name)
        assert rate.limit == bucket_slots(40)
        assert rate.slot_decay_per_second == pytest.approx(40 * SLOTS_PER_REQUEST)
        assert in_flight.limit == 6
        assert in_flight.slot_decay_per_second == 0
        assert 0 < limiter.slots_held <= 6
    finally:
        limiter.close()


@pytest.mark.anyio
async def test_in_flight_slots_go_back_when_idle_and_on_close(prefect_server, scope) -> None:
    limiter, budget = shared_limiter(scope, LimitSpec(rps=100, max_in_flight=4, ramp_s=0))
    try:
        await asyncio.gather(*(hold(limiter, 0.2) for _ in range(4)))
        leased = limiter.slots_held
        assert 1 <= leased <= 4  # it leased them as requests waited
        async with get_client() as client:
            held = await client.read_global_concurrency_limit_by_name(budget.inflight_name)
        assert held.active_slots == leased
        await until(lambda: limiter.slots_held == 0, IDLE_RELEASE_S * 5)
        async with get_client() as client:
            held = await client.read_global_concurrency_limit_by_name(budget.inflight_name)
        assert held.active_slots == 0
        await hold(limiter)  # it leases again when needed
        assert limiter.slots_held >= 1
    finally:
        limiter.close()
    async with get_client() as client:
        held = await client.read_global_concurrency_limit_by_name(budget.inflight_name)
    assert held.active_slots == 0


@pytest.mark.anyio
async def test_two_budgets_never_hold_more_in_flight_slots_than_the_limit(
    prefect_server, scope
) -> None:
    spec = LimitSpec(rps=200, max_in_flight=3, ramp_s=0)
    first, _ = shared_limiter(scope, spec)
    second, _ = shared_limiter(scope, spec)
    peak = 0
    inside = 0

    async def one(limiter: ModelLimiter) -> None:
        nonlocal peak, inside
        async with limiter.slot():
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.05)
            inside -= 1

    try:
        await asyncio.gather(*(one(first) for _ in range(12)), *(one(second) for _ in range(12)))
    finally:
        first.close()
        second.close()
    assert peak <= 3
    assert first.slots_held + second.slots_held <= 3


@pytest.mark.anyio
async def test_a_limit_deleted_under_a_run_falls_back_to_local_with_a_log_line(
    prefect_server, scope, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="qwbatch.limits")
    limiter, budget = shared_limiter(scope, LimitSpec(rps=2, max_in_flight=2, ramp_s=0))
    try:
        await hold(limiter)
        assert budget.state == "shared"
        async with get_client() as client:
            await client.delete_global_concurrency_limit_by_name(budget.rate_name)
        # strict: a missing limit is an error, never "limit nothing" silently.
        await asyncio.wait_for(asyncio.gather(*(hold(limiter) for _ in range(3))), 20)
        assert budget.state == "local"
        assert "does not exist" in budget.reason
        assert any("local to this process" in r.getMessage() for r in caplog.records)
        assert "local to this process" in limiter.describe_sharing()
    finally:
        limiter.close()


@pytest.mark.anyio
async def test_an_unreachable_server_falls_back_to_local_with_a_log_line(
    scope, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="qwbatch.limits")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):
        limiter, budget = shared_limiter(scope, LimitSpec(rps=50, max_in_flight=2, ramp_s=0))
    try:
        await asyncio.wait_for(asyncio.gather(*(hold(limiter) for _ in range(4))), 60)
        assert budget.state == "local"
        assert limiter.slots_held == 2  # the whole local cap, since nothing is shared
        messages = [r.getMessage() for r in caplog.records]
        assert any("are local to this process" in m and "PREFECT_API_URL" in m for m in messages)
    finally:
        limiter.close()
