"""The rate learner in simulated time: cut, remember, slow approach, rare probe, forget, a
halved limit, and ``auto``'s search upward. No sleeps: every event carries its own time."""

from __future__ import annotations

import heapq
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from qwbatch.limits import learning
from qwbatch.limits.learning import RateLearner
from qwbatch.limits.ramp import SharedRamp
from qwbatch.limits.shared import SYNC_S


@dataclass
class Account:
    """The provider's side: a token bucket of one second of traffic at ``limit(t)`` req/s,
    answers ``latency`` seconds after the send (a 429 as well)."""

    limit: Callable[[float], float]
    latency: float = 0.5
    tokens: float = 0.0
    at: float = 0.0
    rate: float = 0.0
    sends: list[tuple[float, bool]] = field(default_factory=list)

    def admit(self, now: float) -> bool:
        rate = self.limit(now)
        if rate != self.rate:  # a new limit: a full bucket at the new rate
            self.rate, self.tokens = rate, rate
        self.tokens = min(rate, self.tokens + (now - self.at) * rate)
        self.at = now
        ok = self.tokens >= 1
        self.tokens -= ok
        self.sends.append((now, ok))
        return ok

    def admitted_per_s(self, start: float, end: float) -> float:
        return sum(1 for t, ok in self.sends if ok and start <= t < end) / (end - start)

    def share_429(self, start: float = 0.0, end: float = float("inf")) -> float:
        window = [ok for t, ok in self.sends if start <= t < end]
        return window.count(False) / max(len(window), 1)


def drive(learner: RateLearner, account: Account, until: float, start: float = 0.0) -> None:
    """Send as fast as the learner lets (one every ``1 / cap`` s) until ``until``; answers
    come back ``latency`` later, in order."""
    answers: list[tuple[float, bool, float]] = []
    t = start
    while t < until:
        while answers and answers[0][0] <= t:
            answer(learner, *heapq.heappop(answers))
        learner.on_send(t)
        heapq.heappush(answers, (t + account.latency, account.admit(t), t))
        t += 1 / learner.cap
    for item in sorted(answers):
        answer(learner, *item)


def answer(learner: RateLearner, at: float, ok: bool, sent_at: float) -> None:
    if ok:
        learner.on_success(at)
    else:
        learner.on_throttle(at, sent_at)


def test_a_429_cuts_and_remembers_where_429s_began() -> None:
    learner = RateLearner(start=16, ceiling=16)
    assert learner.state == "configured"
    assert learner.on_throttle(now=3.0)
    # Reached by a fast climb, so it overshot: remembered a little below.
    assert learner.learned == pytest.approx(16 * learning.OVERSHOOT)
    assert learner.cap == pytest.approx(learning.CUT_TO * 16 * learning.OVERSHOOT)
    assert learner.state == "learned"
    # The other answers of the burst count once.
    assert not learner.on_throttle(now=3.5)
    assert learner.cap == pytest.approx(learning.CUT_TO * 16 * learning.OVERSHOOT)


def test_a_429_during_the_ramp_is_learned_at_the_rate_it_was_sent_at() -> None:
    learner = RateLearner(start=16, ceiling=16)
    assert learner.on_throttle(now=4.0, sent_at=3.8, rate=10.0)  # the ramp: 10 of 16 req/s
    assert learner.learned == pytest.approx(10 * learning.OVERSHOOT)
    assert learner.cap == pytest.approx(learning.CUT_TO * 10 * learning.OVERSHOOT)


def test_429s_that_go_on_after_a_cut_halve_the_rate() -> None:
    learner = RateLearner(start=16, ceiling=16)
    learner.on_throttle(now=0.0)
    cut = learner.cap
    # The cut was not deep enough: 429s go on. One alone could be a stray (NOISE_MIN)...
    assert not learner.on_throttle(now=1.5)
    assert learner.on_throttle(now=1.6)  # ...two are a storm
    assert learner.cap == pytest.approx(cut / 2)


def test_after_a_cut_the_rate_approaches_the_learned_limit_slowly_not_the_ceiling() -> None:
    learner = RateLearner(start=8, ceiling=16, learned=10)
    assert learner.cap == pytest.approx(learning.HOLD * 10)
    # Started near a limit learned earlier; a 429 there: the limit is where it began (a
    # little under: the provider's bucket let the last of the climb through).
    learner.on_throttle(now=1.0)
    limit = learning.NEAR * learning.HOLD * 10
    assert learner.learned == pytest.approx(limit)
    assert learner.cap == pytest.approx(learning.CUT_TO * limit)
    t, caps = 1.0, {}
    while t < 15.0:  # a probe would begin PROBE_QUIET_S after the approach
        t = round(t + 0.1, 1)
        learner.on_send(t)
        learner.on_success(t)
        caps[t] = learner.cap
    # Back to APPROACH_FROM of the limit within about a second, then slowly to HOLD.
    assert caps[3.2] >= learning.APPROACH_FROM * limit  # (in use from 2.1 s: 12 sends)
    assert caps[5.0] < learning.HOLD * limit
    assert caps[15.0] == pytest.approx(learning.HOLD * limit)
    assert max(caps.values()) < learning.HOLD * 10  # never back above where 429s began


def test_a_probe_comes_rarely_and_goes_gently_above_the_limit() -> None:
    account = Account(limit=lambda t: 8.0)
    learner = RateLearner(start=16, ceiling=16)
    drive(learner, account, until=200.0)
    # The probes' 429s: a few per probe, one probe per PROBE_QUIET_S and more.
    late = [t for t, ok in account.sends if not ok and t > 30.0]
    probes = _episodes(late)
    assert 1 <= len(probes) <= 170 / learning.PROBE_QUIET_S
    assert all(count <= 6 for _, count in probes)
    assert account.share_429(start=30.0) < 0.01
    assert account.admitted_per_s(30.0, 200.0) >= 0.95 * 8


def test_told_twice_the_limit_it_settles_under_it_with_few_429s() -> None:
    account = Account(limit=lambda t: 8.0)
    learner = RateLearner(start=16, ceiling=16)
    drive(learner, account, until=120.0)
    assert account.admitted_per_s(0.0, 120.0) >= 0.95 * 8
    assert account.share_429() <= 0.02
    assert learner.learned is not None
    assert 7.5 <= learner.learned <= 8.6


def test_auto_finds_a_limit_four_times_its_start_within_30_seconds() -> None:
    account = Account(limit=lambda t: 8.0)
    learner = RateLearner(start=2, ceiling=None)
    assert learner.state == "searching"
    drive(learner, account, until=120.0)
    reached = next(t for t in range(1, 120) if account.admitted_per_s(t - 5.0, float(t)) >= 0.9 * 8)
    assert reached <= 30
    assert account.share_429() <= 0.03
    assert learner.learned is not None
    assert 7.5 <= learner.learned <= 8.6


def test_a_halved_limit_is_respected_within_5_seconds_and_used_after_30() -> None:
    account = Account(limit=lambda t: 16.0 if t < 60.0 else 8.0)
    learner = RateLearner(start=16, ceiling=16)
    drive(learner, account, until=60.0)
    assert account.admitted_per_s(20.0, 60.0) >= 0.95 * 16
    drive(learner, account, until=65.0, start=60.0)
    assert learner.cap < 8.0  # back under the new limit
    drive(learner, account, until=120.0, start=65.0)
    assert account.admitted_per_s(90.0, 120.0) >= 0.9 * 8
    assert account.share_429(start=65.0) <= 0.02


def test_the_limit_is_forgotten_when_probes_find_room() -> None:
    account = Account(limit=lambda t: 8.0 if t < 40.0 else 100.0)
    learner = RateLearner(start=16, ceiling=16)
    drive(learner, account, until=40.0)
    assert learner.state in ("learned", "probing")
    drive(learner, account, until=200.0, start=40.0)
    # Each probe that finds room raises the limit; the ceiling (or FORGET_AFTER of them in
    # a row) and it is forgotten: the rate is the configured one again.
    assert learner.learned is None
    assert learner.state == "configured"
    assert learner.cap == pytest.approx(16.0)


def test_auto_forgets_and_searches_upward_again_when_the_limit_rises() -> None:
    account = Account(limit=lambda t: 8.0 if t < 40.0 else 20.0)
    learner = RateLearner(start=2, ceiling=None)
    drive(learner, account, until=40.0)
    assert learner.learned is not None
    assert learner.learned < 9
    drive(learner, account, until=240.0, start=40.0)
    assert account.admitted_per_s(200.0, 240.0) >= 0.9 * 20
    assert account.share_429() <= 0.03


def test_the_rate_climbs_only_while_it_is_in_use() -> None:
    learner = RateLearner(start=4, ceiling=None)
    for step in range(100):  # one success every second, far under the rate
        learner.on_send(float(step))
        learner.on_success(float(step))
    assert learner.cap == pytest.approx(4.0)


def test_the_rate_never_falls_below_a_64th_of_the_start() -> None:
    learner = RateLearner(start=64, ceiling=64)
    for step in range(40):
        learner.on_throttle(now=step * 2.0)
    assert learner.cap == pytest.approx(1.0)


def _episodes(times: list[float], gap: float = 5.0) -> list[tuple[float, int]]:
    """429 times grouped into episodes (first time, count) separated by ``gap`` seconds."""
    out: list[tuple[float, int]] = []
    for t in times:
        if out and t - out[-1][0] < gap:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((t, 1))
    return out


def test_what_is_kept_reads_back_and_anything_else_is_ignored() -> None:
    kept = learning.Learned(rate=7.5, learned=8.0, at=1.0)
    assert learning.Learned.from_json(kept.to_json()) == kept
    assert learning.Learned.from_json({"rate": 3.0, "learned": None}) == learning.Learned(3.0, None)
    for bad in (None, [], {"rate": -1}, {"rate": "8"}, {"rate": 8, "learned": 0}, {"rate": True}):
        assert learning.Learned.from_json(bad) is None


def test_another_workers_lower_rate_counts_as_a_cut() -> None:
    learner = RateLearner(start=16, ceiling=16)
    learner.adopt(learning.Learned(rate=6.0, learned=7.0, cuts=1), now=10.0)
    assert (learner.cap, learner.learned, learner.state, learner.cuts) == (6.0, 7.0, "learned", 1)
    # 429s for requests sent before we took it count with that cut.
    assert not learner.on_throttle(now=10.5, sent_at=9.8)
    assert learner.cap == 6.0


def test_what_another_worker_published_before_our_cut_does_not_undo_it() -> None:
    learner = RateLearner(start=16, ceiling=16)
    learner.on_throttle(now=5.0)
    cut = learner.snapshot()
    # Published by a worker that had not yet seen the cut: ignored.
    learner.adopt(learning.Learned(rate=15.0, learned=None, cuts=0), now=5.2)
    assert learner.snapshot() == cut
    # Same cuts known, a lower rate: a worker behind in the same climb, not a cut.
    learner.adopt(learning.Learned(rate=cut.rate * 0.95, learned=cut.learned, cuts=1), now=5.4)
    assert learner.snapshot() == cut
    # Same cuts known, further along the climb: taken, and not as a cut.
    learner.adopt(learning.Learned(rate=cut.rate * 1.05, learned=cut.learned, cuts=1), now=7.0)
    assert learner.cap == cut.rate * 1.05
    # Not a cut made at 7.0 (429s then would be its own burst): 429s 2.4 s after the cut
    # at 5.0 make a storm — one alone a stray, two a halving.
    assert not learner.on_throttle(now=7.5, sent_at=7.4)
    assert learner.on_throttle(now=7.6, sent_at=7.45)


def test_a_stray_429_under_the_learned_limit_is_not_a_cut() -> None:
    learner = RateLearner(start=8, ceiling=16, learned=10.0)
    learner.on_throttle(now=10.0)  # near the limit: a cut; learned 9.5, rate 8.1
    learned, rate = learner.learned, learner.cap
    for i in range(16):  # under the limit the answers come back fine...
        learner.on_success(now=11.2 + i * 0.1)
    assert not learner.on_throttle(now=12.8, sent_at=12.7)  # ...but for one (1 in 17)
    assert (learner.learned, learner.cap) >= (learned, rate)
    cuts = [learner.on_throttle(now=12.9 + i * 0.05, sent_at=12.85 + i * 0.05) for i in range(6)]
    assert cuts == [False] * 4 + [True, False]  # many (5 in 21): the limit fell
    assert learner.cap < 0.8 * rate


def drive_shared(learners: list[RateLearner], account: Account, until: float, seed: int) -> None:
    """Workers sharing one rate, as through Prefect: the sum is paced at the last rate any
    of them published, ramped for the account from a quarter of it over the first 5 s
    until a cut ends the ramp (as :class:`~qwbatch.limits.ramp.SharedRamp` does); every
    :data:`SYNC_S` each takes another's publication and publishes its own when it moved;
    each send goes to a random worker and is answered 0.2–1.0 s later, a 429 learned at the
    shared rate at its send; sends bunch (gaps of 0.5–1.5 × the pace), as two workers'
    leases do."""
    rng = random.Random(seed)
    answers: list[tuple[float, int, bool, float, float]] = []
    published, writer, version = learners[0].snapshot(), 0, 1
    seen = [0] * len(learners)
    ramp = SharedRamp(seconds=5.0, start=0.25)
    ramp.begin(cuts=0, now=0.0)
    t, next_sync = 0.0, SYNC_S
    while t < until:
        while answers and answers[0][0] <= t:
            at, i, ok, sent_at, rate = heapq.heappop(answers)
            if ok:
                learners[i].on_success(at, in_use=True)  # the shared limit binds
            else:
                learners[i].on_throttle(at, sent_at, rate)
        if t >= next_sync:
            next_sync += SYNC_S
            for i, learner in enumerate(learners):
                if seen[i] != version and writer != i:
                    learner.adopt(published, t)
                seen[i] = version
                mine = learner.snapshot()
                if abs(mine.rate - published.rate) > 0.01 * published.rate or (
                    mine.learned != published.learned or mine.cuts != published.cuts
                ):
                    published, writer, version = mine, i, version + 1
                    seen[i] = version
        i = rng.randrange(len(learners))
        learners[i].on_send(t)
        rate = published.rate * ramp.fraction(max(x.cuts for x in learners), now=t)
        heapq.heappush(answers, (t + rng.uniform(0.2, 1.0), i, account.admit(t), t, rate))
        t += rng.uniform(0.5, 1.5) / rate


@pytest.mark.parametrize("workers", [2, 4])
def test_workers_sharing_a_rate_told_twice_the_limit_keep_close_to_it(workers: int) -> None:
    """Told 2R, 2 or 4 workers sharing what they learn and one ramp, sixteen seeds of 120 s
    each. Stray 429s under the learned limit, and publications older than a cut, must not
    ratchet the shared limit down, and a 429 met in the ramp must be learned at the
    account's rate then: learned at the cap (2R), the first cut was far too shallow and a
    storm halved the rate (min 0.85 of R)."""
    admitted, shares = [], []
    for seed in range(1, 17):
        account = Account(limit=lambda t: 8.0)
        learners = [RateLearner(start=16, ceiling=16) for _ in range(workers)]
        drive_shared(learners, account, until=120.0, seed=seed)
        admitted.append(account.admitted_per_s(0.0, 120.0) / 8)
        shares.append(account.share_429())
    assert statistics.median(admitted) >= 0.97, admitted
    assert min(admitted) >= 0.95, admitted
    assert statistics.median(shares) <= 0.025, shares
