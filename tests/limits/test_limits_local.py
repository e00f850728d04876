"""The local limiter (pacing, in-flight cap, ramp, AIMD, Retry-After), which limits apply, and
the status lines."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings
from pydantic import ValidationError

from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.limits import LimiterRegistry, LimitSpec, ModelLimiter, limit_spec, status_of
from qwbatch.limits.gate import TokenPool
from qwbatch.limits.registry import local_reason
from qwbatch.limits.status import lines, reporting

TABLE = ModelTable.load()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def hold(limiter: ModelLimiter, seconds: float = 0.0) -> None:
    async with limiter.slot():
        await asyncio.sleep(seconds)


@pytest.mark.anyio
async def test_sends_are_spaced_by_one_over_the_rate() -> None:
    limiter = ModelLimiter(LimitSpec(rps=50, max_in_flight=50, ramp_s=0))
    await asyncio.gather(*(hold(limiter) for _ in range(15)))
    times = limiter.send_times()
    assert len(times) == 15
    # Send k goes out no earlier than k / rate after the first (a waiter woken late does not
    # let the next one go early); asyncio may wake a clock tick early, never a millisecond.
    for k, sent in enumerate(times):
        assert sent - times[0] >= k / 50 - 0.001


@pytest.mark.anyio
async def test_requests_in_flight_never_exceed_the_cap() -> None:
    limiter = ModelLimiter(LimitSpec(rps=1000, max_in_flight=3, ramp_s=0))
    inside = peak = 0

    async def one() -> None:
        nonlocal inside, peak
        async with limiter.slot():
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.005)
            inside -= 1

    await asyncio.gather(*(one() for _ in range(20)))
    assert peak == 3
    assert limiter.in_flight == 0


@pytest.mark.anyio
async def test_the_ramp_starts_at_a_quarter_and_reaches_the_ceiling() -> None:
    clock = FakeClock()
    limiter = ModelLimiter(LimitSpec(rps=8, max_in_flight=4, ramp_s=4), clock=clock)
    await hold(limiter)  # the first send starts the ramp
    assert limiter.current_rate() == pytest.approx(2.0)
    clock.now = 2.0
    assert limiter.current_rate() == pytest.approx(5.0)
    clock.now = 4.0
    assert limiter.current_rate() == pytest.approx(8.0)
    clock.now = 100.0
    assert limiter.current_rate() == pytest.approx(8.0)
    await hold(limiter)  # after a long idle spell the ramp starts over
    assert limiter.current_rate() == pytest.approx(2.0)


def test_a_burst_of_429s_cuts_the_rate_once_and_remembers_where_they_began() -> None:
    clock = FakeClock()
    limiter = ModelLimiter(LimitSpec(rps=10, max_in_flight=4, ramp_s=0), clock=clock)
    assert limiter.learning() == "configured"
    for _ in range(6):  # the answers of one burst arrive together
        limiter.on_throttle()
    assert limiter.current_rate() == pytest.approx(10 * 0.9 * 0.85)
    assert limiter.throttled == 6
    assert limiter.learning() == "learned 9.00 req/s"
    assert len(limiter.throttle_times()) == 6


class SharedStandIn:
    """A shared budget that is sharing (its rate limit held nothing back lately); the shared
    limit's rate is ``rate``."""

    def __init__(self, rate: float | None = 8.0) -> None:
        self.pool = TokenPool()
        self.pool.open()
        self.rate = rate

    def start(self, rate: object, learning: object = None) -> None:
        pass

    def binding(self) -> bool | None:
        return False

    def shared_rate(self) -> float | None:
        return self.rate

    def describe(self) -> str:
        return "shared (stand-in)"

    def close(self) -> None:
        pass


@pytest.mark.anyio
async def test_a_429_in_the_ramp_is_learned_at_the_ramps_rate_and_the_cut_ends_the_ramp() -> None:
    # Alone, the ramp's rate (5 of 8 req/s, 2 s into 4) is the account's: learned there.
    clock = FakeClock()
    limiter = ModelLimiter(LimitSpec(rps=8, max_in_flight=4, ramp_s=4), clock=clock)
    await hold(limiter)  # the ramp starts
    clock.now = 2.0
    await hold(limiter)  # the request answered 429, sent at 5 req/s
    limiter.on_throttle()
    assert limiter.learning() == "learned 4.50 req/s"  # 0.9 x 5
    # The cut ends the ramp: the rate is the cut rate, not a ramp's share of it.
    assert limiter.current_rate() == pytest.approx(4.5 * 0.85)


@pytest.mark.anyio
async def test_a_429_is_learned_at_the_accounts_rate_at_its_send() -> None:
    # Shared, this worker's ramp is its own; the account received what the shared limit let
    # every worker send together, at the rate it had when the request went out.
    clock = FakeClock()
    budget = SharedStandIn(rate=6.0)  # the shared limit, 6 req/s along the account's ramp
    shared = ModelLimiter(LimitSpec(rps=8, max_in_flight=4, ramp_s=4), shared=budget, clock=clock)
    await hold(shared)
    clock.now = 2.0
    await hold(shared)  # sent while the shared limit let 6 req/s through
    budget.rate = 8.0  # the ramp went on while the answer came back
    shared.on_throttle()
    assert shared.learning() == "learned 5.40 req/s"  # 0.9 x 6
    # Not sharing (the budget fell back to local limits): this limiter's own rate.
    clock = FakeClock()
    budget = SharedStandIn(rate=None)
    fallen = ModelLimiter(LimitSpec(rps=8, max_in_flight=4, ramp_s=4), shared=budget, clock=clock)
    await hold(fallen)
    clock.now = 2.0
    await hold(fallen)
    fallen.on_throttle()
    assert fallen.learning() == "learned 4.50 req/s"


async def send_and_succeed(limiter: ModelLimiter, pause_s: float = 0.0) -> None:
    async with limiter.slot():
        pass
    limiter.on_success()
    await asyncio.sleep(pause_s)


@pytest.mark.anyio
async def test_auto_climbs_above_the_table_figure_while_sends_queue_for_the_rate() -> None:
    limiter = ModelLimiter(LimitSpec(rps=20, max_in_flight=50, ramp_s=0, auto=True))
    assert limiter.learning() == "auto, searching upward"
    await asyncio.gather(*(send_and_succeed(limiter) for _ in range(40)))
    assert limiter.current_rate() > 20.0
    assert limiter.learning() == "auto, searching upward"


@pytest.mark.anyio
async def test_the_rate_does_not_climb_while_nothing_waits_for_it() -> None:
    limiter = ModelLimiter(LimitSpec(rps=20, max_in_flight=50, ramp_s=0, auto=True))
    for _ in range(10):  # one at a time, far under the rate
        await send_and_succeed(limiter, pause_s=0.1)
    assert limiter.current_rate() == pytest.approx(20.0)


@pytest.mark.anyio
async def test_retry_after_holds_every_send_until_it_has_passed() -> None:
    limiter = ModelLimiter(LimitSpec(rps=100, max_in_flight=10, ramp_s=0))
    await hold(limiter)
    limiter.on_throttle(retry_after=0.3)
    resume = limiter.paused_until()
    await asyncio.gather(*(hold(limiter) for _ in range(5)))
    after = limiter.send_times()[1:]
    assert len(after) == 5
    assert min(after) >= resume


def test_limits_come_from_model_settings_then_run_flags_then_the_table() -> None:
    plain, pro = TABLE.get("qwen-image-2.0"), TABLE.get("qwen-image-2.0-pro")
    assert limit_spec(plain, Settings()) == LimitSpec(rps=plain.rps, max_in_flight=4)
    run_wide = Settings(rps=5.0, max_in_flight=7)
    assert limit_spec(plain, run_wide) == LimitSpec(rps=5.0, max_in_flight=7)
    per_model = Settings(
        rps=5.0, max_in_flight=7, model_limits={"qwen-image-2.0-pro": {"rps": 0.5}}
    )
    assert limit_spec(pro, per_model) == LimitSpec(rps=0.5, max_in_flight=7)
    assert limit_spec(plain, per_model) == LimitSpec(rps=5.0, max_in_flight=7)


def test_rps_auto_at_every_level_starts_from_the_table_figure(tmp_path: Path) -> None:
    plain, pro = TABLE.get("qwen-image-2.0"), TABLE.get("qwen-image-2.0-pro")
    auto = LimitSpec(rps=plain.rps, max_in_flight=4, auto=True)
    assert limit_spec(plain, Settings(rps="auto")) == auto
    per_model = Settings(rps=5.0, model_limits={"qwen-image-2.0": {"rps": "auto"}})
    assert limit_spec(plain, per_model) == auto
    assert not limit_spec(pro, per_model).auto
    models = tmp_path / "models.toml"
    models.write_text('[models."qwen-image-2.0"]\nrps = "auto"\n', encoding="utf-8")
    table = ModelTable.load(models)
    assert table.get("qwen-image-2.0").rps == plain.rps  # the bundled figure is the start
    assert limit_spec(table.get("qwen-image-2.0"), Settings()) == auto
    assert limit_spec(table.get("qwen-image-2.0"), Settings(rps=3.0)).auto is False
    with pytest.raises(ValidationError):
        Settings(rps="fast")


def test_per_model_limits_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWBATCH_MODEL_LIMITS", '{"qwen-image-max": {"max_in_flight": 1}}')
    spec = limit_spec(TABLE.get("qwen-image-max"), Settings())
    assert spec == LimitSpec(rps=TABLE.get("qwen-image-max").rps, max_in_flight=1)
    monkeypatch.setenv("QWBATCH_MODEL_LIMITS", '{"qwen-image-max": {"rps": 0}}')
    with pytest.raises(ValidationError):
        Settings()


def test_limits_are_local_without_a_prefect_server_or_when_sharing_is_off() -> None:
    assert local_reason(Settings(shared_limits="off")) == "shared_limits is off"
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        reason = local_reason(Settings())
    assert reason is not None
    assert "PREFECT_API_URL" in reason


def test_the_registry_keeps_one_limiter_per_model_and_rebuilds_it_when_limits_change() -> None:
    registry = LimiterRegistry()
    settings = Settings(dashscope_base_url="http://127.0.0.1:9/api/v1", shared_limits="off")
    model = TABLE.get("qwen-image-2.0")
    first = registry.for_model(model, settings)
    assert registry.for_model(model, settings) is first
    faster = registry.for_model(model, settings.model_copy(update={"rps": 9.0}))
    assert faster is not first
    assert faster.spec.rps == 9.0
    assert registry.limiters() == [faster]
    assert "local to this process (shared_limits is off)" in faster.describe_sharing()


@pytest.mark.anyio
async def test_status_line_shows_rate_limit_in_flight_and_429s() -> None:
    registry = LimiterRegistry()
    settings = Settings(dashscope_base_url="http://127.0.0.1:9/api/v1", shared_limits="off")
    limiter = registry.for_model(TABLE.get("qwen-image-2.0"), settings)
    await hold(limiter)
    limiter.on_throttle()
    async with limiter.slot():
        status = status_of(limiter)
        text = lines(registry)
    assert status.in_flight == 1
    assert status.throttled_per_min == 1
    assert status.ceiling == 2.0
    assert status.limit == pytest.approx(limiter.current_rate(), rel=0.01)
    assert text == [status.line()]
    assert text[0].startswith("limits qwen-image-2.0: ")
    assert "in flight 1/4, 429s 1/min" in text[0]
    assert "local to this process" in text[0]


@pytest.mark.anyio
async def test_reporting_sends_lines_while_the_block_runs_and_at_its_end() -> None:
    registry = LimiterRegistry()
    settings = Settings(dashscope_base_url="http://127.0.0.1:9/api/v1", shared_limits="off")
    limiter = registry.for_model(
        TABLE.get("qwen-image-2.0"), settings.model_copy(update={"rps": 200.0})
    )
    seen: list[str] = []
    with reporting(seen.append, every_s=0.05, registry=registry):
        for _ in range(500):  # keep sending, as a run does, until a periodic line came
            await hold(limiter)
            if seen:
                break
    assert len(seen) >= 2  # at least one periodic line, and the last one
    assert all(line.startswith("limits qwen-image-2.0: ") for line in seen)
