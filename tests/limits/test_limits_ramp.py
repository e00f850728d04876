"""The account's ramp: one ramp of the shared rate limit for every worker, begun by the first
worker of an idle account, followed by those that join, ended by a cut — in its own terms,
and against a real Prefect server (the session harness)."""

from __future__ import annotations

import asyncio
import datetime
import time
import uuid
from collections.abc import Callable

import pytest
from prefect.client.orchestration import PrefectClient, get_client

from qwbatch.limits import LimitSpec, ModelLimiter
from qwbatch.limits.local import IDLE_RESTART_S
from qwbatch.limits.prefect_limit import SLOTS_PER_REQUEST
from qwbatch.limits.ramp import SharedRamp
from qwbatch.limits.shared import PrefectBudget, _idle


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_the_ramp_climbs_from_its_start_to_all_of_the_rate() -> None:
    ramp = SharedRamp(seconds=4.0, start=0.25)
    assert ramp.fraction(cuts=0, now=100.0) == 1.0  # none begun: nothing held back
    ramp.begin(cuts=0, now=100.0)
    assert ramp.fraction(cuts=0, now=100.0) == pytest.approx(0.25)
    assert ramp.fraction(cuts=0, now=102.0) == pytest.approx(0.625)
    assert ramp.running(cuts=0, now=103.9)
    assert ramp.fraction(cuts=0, now=104.0) == 1.0
    assert not ramp.running(cuts=0, now=104.0)


def test_a_cut_ends_the_ramp() -> None:
    ramp = SharedRamp(seconds=4.0, start=0.25)
    ramp.begin(cuts=3, now=0.0)  # three cuts known when it began
    assert ramp.fraction(cuts=3, now=1.0) < 1.0
    assert ramp.fraction(cuts=4, now=1.0) == 1.0  # a cut since: the learned rate is the rate


def test_of_two_ramps_the_later_wins_and_anything_else_is_ignored() -> None:
    ramp = SharedRamp(seconds=4.0, start=0.25)
    assert ramp.take(50.0, cuts=0)
    assert not ramp.take(40.0, cuts=0)  # begun before ours: the account was not idle since
    assert ramp.take(60.0, cuts=1)
    assert (ramp.began, ramp.cuts) == (60.0, 1)
    for junk in (None, "60", True, -1, 0):
        assert not ramp.take(junk, cuts=0)
    assert ramp.began == 60.0


def test_a_limit_is_idle_when_nothing_changed_it_for_the_idle_spell() -> None:
    now = datetime.datetime.now(datetime.UTC)
    assert _idle(None)
    assert _idle(now - datetime.timedelta(seconds=IDLE_RESTART_S + 1))
    assert not _idle(now - datetime.timedelta(seconds=1))
    naive = datetime.datetime.utcnow() - datetime.timedelta(seconds=1)
    assert not _idle(naive)  # a server's time without a zone is UTC


def shared_limiter(scope: str, spec: LimitSpec) -> tuple[ModelLimiter, PrefectBudget]:
    budget = PrefectBudget(scope=scope, model="qwen-image-2.0", spec=spec)
    return ModelLimiter(spec, name="qwen-image-2.0", shared=budget), budget


async def shared_rps(client: PrefectClient, name: str) -> float:
    limit = await client.read_global_concurrency_limit_by_name(name)
    return limit.slot_decay_per_second / SLOTS_PER_REQUEST


async def until(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.mark.anyio
async def test_workers_follow_one_ramp_of_the_shared_limit(prefect_server: None) -> None:
    """The first worker of an idle account ramps the shared limit 4 -> 16 req/s over 4 s,
    in steps; a worker joining mid-ramp follows that ramp (the limit does not jump to the
    whole rate); one joining after it does not ramp the limit again."""
    scope = f"test-{uuid.uuid4().hex[:8]}"
    spec = LimitSpec(rps=16, max_in_flight=4, ramp_s=4.0)
    first, first_budget = shared_limiter(scope, spec)
    joiners: list[ModelLimiter] = []
    try:
        await until(lambda: first_budget.state == "shared")
        began = first_budget.ramp.began
        assert began is not None
        seen: list[tuple[float, float]] = []
        async with get_client() as client:
            while time.time() - began < 6.0:
                seen.append((time.time() - began, await shared_rps(client, first_budget.rate_name)))
                if not joiners and time.time() - began > 1.5:
                    joiner, joiner_budget = shared_limiter(scope, spec)
                    joiners.append(joiner)
                await asyncio.sleep(0.1)
            late, late_budget = shared_limiter(scope, spec)
            joiners.append(late)
            await until(lambda: late_budget.state == "shared")
            after_late = [await shared_rps(client, first_budget.rate_name) for _ in range(5)]
        rates = [rate for _, rate in seen]
        assert rates[0] == pytest.approx(4.0, rel=0.15)  # a quarter of the rate at first
        # It only climbs (no cut here; the worker that began the ramp alone raises it)...
        timeline = [(round(at, 2), round(rate, 2)) for at, rate in seen]
        assert rates == sorted(rates), timeline
        assert len({round(r, 2) for r in rates}) >= 3  # ...in steps...
        assert rates[-1] == pytest.approx(16.0)  # ...to all of it after the ramp
        # The joiner took the first worker's ramp: same beginning, and no jump to 16 within it.
        assert joiner_budget.ramp.began == began
        assert all(rate < 16.0 for at, rate in seen if at < 3.0)
        # The late one found the limit busy: no new ramp, the limit left at the whole rate.
        assert late_budget.ramp.began == began
        assert all(rate == pytest.approx(16.0) for rate in after_late)
    finally:
        first.close()
        for joiner in joiners:
            joiner.close()
