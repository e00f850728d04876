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
from qwbatch.limits.prefect_limit import (
    SLOTS_PER_REQUEST,
    bucket_slots,
    ensure_rate_limit,
    lease_size,
    limit_name,
)
from qwbatch.limits.shared import PrefectBudget


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
    rate = limit_name("dashscope-intl.aliyuncs.com", "qwen-image-2.0")
    assert rate == "qwbatch-rps:qwen-image-2.0@dashscope-intl.aliyuncs.com"
    assert "/" not in limit_name("a/b%c", "m")  # Prefect refuses these characters


@pytest.mark.anyio
async def test_the_run_creates_its_rate_limit_and_leases_rate_tokens(prefect_server, scope) -> None:
    spec = LimitSpec(rps=40, max_in_flight=6, ramp_s=0)
    limiter, budget = shared_limiter(scope, spec)
    try:
        await asyncio.gather(*(hold(limiter, 0.01) for _ in range(30)))
        assert budget.state == "shared"
        assert budget.leases_taken >= 30 // budget.lease
        assert "shared via Prefect limit" in limiter.describe_sharing()
        async with get_client() as client:
            rate = await client.read_global_concurrency_limit_by_name(budget.rate_name)
            # The in-flight cap is per process: nothing on the server could outlive a crash.
            limits = await client.read_global_concurrency_limits(limit=200)
        assert rate.limit == bucket_slots(40)
        assert rate.slot_decay_per_second == pytest.approx(40 * SLOTS_PER_REQUEST)
        assert [lim.name for lim in limits if scope in lim.name] == [budget.rate_name]
    finally:
        limiter.close()


@pytest.mark.anyio
async def test_a_dead_workers_share_of_the_rate_is_free_again_at_once(
    prefect_server, scope
) -> None:
    # A worker that leased and died (never closed, never spent) leaves nothing held for long:
    # the rate limit's slots decay. A second worker gets its tokens right after.
    spec = LimitSpec(rps=20, max_in_flight=2, ramp_s=0)
    dead, dead_budget = shared_limiter(scope, spec)
    await asyncio.gather(*(hold(dead) for _ in range(3)))
    assert dead_budget.state == "shared"
    dead_budget._closed = True  # stops leasing as a killed process would; nothing given back
    alive, budget = shared_limiter(scope, spec)
    try:
        await asyncio.wait_for(asyncio.gather(*(hold(alive) for _ in range(10))), 20)
        assert budget.state == "shared"
        assert budget.leases_taken >= 10 // budget.lease
    finally:
        alive.close()
        dead.close()


@pytest.mark.anyio
async def test_the_in_flight_cap_holds_per_process_with_a_shared_rate(
    prefect_server, scope
) -> None:
    spec = LimitSpec(rps=200, max_in_flight=3, ramp_s=0)
    first, _ = shared_limiter(scope, spec)
    second, _ = shared_limiter(scope, spec)
    peak = {id(first): 0, id(second): 0}
    inside = {id(first): 0, id(second): 0}

    async def one(limiter: ModelLimiter) -> None:
        key = id(limiter)
        async with limiter.slot():
            inside[key] += 1
            peak[key] = max(peak[key], inside[key])
            await asyncio.sleep(0.05)
            inside[key] -= 1

    try:
        await asyncio.gather(*(one(first) for _ in range(12)), *(one(second) for _ in range(12)))
    finally:
        first.close()
        second.close()
    assert 1 <= peak[id(first)] <= 3  # each process stays under its own cap
    assert 1 <= peak[id(second)] <= 3


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
        messages = [r.getMessage() for r in caplog.records]
        assert any("are local to this process" in m and "PREFECT_API_URL" in m for m in messages)
    finally:
        limiter.close()


def test_a_limit_set_to_a_lower_rate_keeps_no_slots_leased_at_the_higher_one(
    prefect_server, scope: str
) -> None:
    """A run at 1,000 req/s fills the limit; a later run at 2 req/s sets it to its own rate
    and must not inherit tens of thousands of undecayed slots (minutes of waiting)."""
    name = limit_name(scope, "qwen-image-2.0")

    async def scenario() -> tuple[int, int, float]:
        async with get_client() as client:
            await ensure_rate_limit(client, name, 1000)
            await client.increment_concurrency_slots(
                names=[name], slots=bucket_slots(1000) - 10, mode="rate_limit"
            )
            await ensure_rate_limit(client, name, 2)
            limit = await client.read_global_concurrency_limit_by_name(name)
            await client.delete_global_concurrency_limit_by_name(name)
            return limit.active_slots, limit.limit, limit.slot_decay_per_second

    held, size, decay = asyncio.run(scenario())
    assert (size, decay) == (bucket_slots(2), 2 * SLOTS_PER_REQUEST)
    assert held <= size  # at most one bucket of the new rate to wait for (0.75 s)


class RacingClient:
    """A Prefect client on which another worker's lease of ``slots`` lands between
    :func:`ensure_rate_limit`'s read of the limit and its update (the race it must not
    lose), and which keeps the update it sent."""

    def __init__(self, client, slots: int) -> None:
        self._client, self._slots = client, slots
        self.sent = None

    async def read_global_concurrency_limit_by_name(self, name: str):
        read = await self._client.read_global_concurrency_limit_by_name(name)
        await self._client.increment_concurrency_slots(
            names=[name], slots=self._slots, mode="rate_limit"
        )
        return read

    async def update_global_concurrency_limit(self, name: str, update) -> None:
        self.sent = update
        await self._client.update_global_concurrency_limit(name, update)


def test_a_lease_granted_while_the_limit_is_raised_still_counts(prefect_server, scope: str) -> None:
    """Raised from 0.04 to 0.08 req/s (decay 4 then 8 slots/s: seconds of slack for a
    loaded machine) while another worker leases 60 slots: the server's count keeps them."""
    name = limit_name(scope, "qwen-image-2.0")

    async def scenario() -> tuple[int, float, object]:
        async with get_client() as client:
            await ensure_rate_limit(client, name, 0.04)
            await client.increment_concurrency_slots(names=[name], slots=60, mode="rate_limit")
            racing = RacingClient(client, 60)
            began = time.monotonic()
            await ensure_rate_limit(racing, name, 0.08)
            limit = await client.read_global_concurrency_limit_by_name(name)
            elapsed = time.monotonic() - began
            await client.delete_global_concurrency_limit_by_name(name)
            return limit.active_slots, elapsed, racing.sent

    held, elapsed, sent = asyncio.run(scenario())
    assert "active_slots" not in sent.model_fields_set  # the server's own count is kept
    # Both grants, less what decayed since (at most 8 slots/s); written back, the read of
    # 60 would have dropped the second.
    assert held >= 120 - 8 * elapsed - 8 - 1, (held, elapsed)


def test_a_lease_granted_while_the_limit_is_cut_still_counts(prefect_server, scope: str) -> None:
    """Cut from 16 to 4 req/s (a smaller bucket) while another worker leases one lease at
    the old rate: the slots written down count it, up to the new bucket."""
    name = limit_name(scope, "qwen-image-2.0")

    async def scenario() -> tuple[int, object]:
        async with get_client() as client:
            await ensure_rate_limit(client, name, 16)
            racing = RacingClient(client, lease_size(16) * SLOTS_PER_REQUEST)
            await ensure_rate_limit(racing, name, 4)
            await client.delete_global_concurrency_limit_by_name(name)
            assert racing.sent is not None
            return racing.sent.active_slots, racing.sent

    written, sent = asyncio.run(scenario())
    assert (sent.limit, sent.slot_decay_per_second) == (bucket_slots(4), 4 * SLOTS_PER_REQUEST)
    # The read saw an empty limit; the racing lease (400 slots) is counted, capped at the
    # new bucket (150): written back as read, it would have been 0.
    assert written == bucket_slots(4)


@pytest.mark.anyio
async def test_what_one_worker_learns_every_worker_uses(prefect_server, scope: str) -> None:
    spec = LimitSpec(rps=16, max_in_flight=4, ramp_s=0)
    first, first_budget = shared_limiter(scope, spec)
    second, second_budget = shared_limiter(scope, spec)
    try:
        await asyncio.gather(hold(first), hold(second))
        await until(lambda: first_budget.state == second_budget.state == "shared")
        # The first worker's request is answered 429: it cuts and remembers where 429s began.
        async with first.slot():
            pass
        first.on_throttle()
        learned = first.learned()
        assert learned.learned is not None
        assert learned.rate < 16
        # The second takes it from the Prefect variable; the shared rate limit follows.
        await until(lambda: second.learned().learned == pytest.approx(learned.learned))
        assert second.current_rate() == pytest.approx(learned.rate, rel=0.02)
        assert second.learning().startswith("learned ")
        async with get_client() as client:
            await until_async(
                lambda: _shared_rps(client, first_budget.rate_name),
                lambda rps: rps == pytest.approx(learned.rate, rel=0.02),
            )
        # A third worker, started now, starts from what the others learned.
        third, _ = shared_limiter(scope, spec)
        try:
            await hold(third)
            await until(lambda: third.learned().learned == pytest.approx(learned.learned))
        finally:
            third.close()
    finally:
        first.close()
        second.close()


async def _shared_rps(client, name: str) -> float:
    limit = await client.read_global_concurrency_limit_by_name(name)
    return limit.slot_decay_per_second / SLOTS_PER_REQUEST


async def until_async(read, check, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check(await read()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


def test_variable_names_are_what_prefect_allows_and_keep_accounts_apart() -> None:
    from qwbatch.limits.prefect_limit import variable_name

    one = variable_name("dashscope-intl.aliyuncs.com", "qwen-image-2.0")
    other = variable_name("dashscope.aliyuncs.com", "qwen-image-2.0")
    assert one != other
    for name in (one, other, variable_name("Host:8080/Path", "Model.X")):
        assert all(c.islower() or c.isdigit() or c in "-_" for c in name)
