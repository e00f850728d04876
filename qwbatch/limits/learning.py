"""Learning the account's request limit from the provider's answers: :class:`RateLearner`.

The figure a run is told (``--rps``, the model table) is rarely the one the account gets:
another job of the account takes its share, a tier changes. A :class:`RateLearner` keeps the
rate a limiter may send at (``cap``, requests per second) and learns the account's limit
from 429s:

- **cut, remember**: a 429 for a request sent :data:`CUT_COOLDOWN_S` or more after the last
  cut (the provider's bucket is empty just after one; the send time unknown: answered that
  long after it) cuts the rate to
  :data:`CUT_TO` of the rate at which the 429s began, and remembers that rate as the
  ``learned`` limit. A rate reached by a fast climb overshoots, so it is remembered at
  :data:`OVERSHOOT` of itself; a rate reached by the slow approach is where 429s really
  begin. 429s that go on within :data:`STORM_S` of a cut halve the rate instead: the cut
  was not deep enough (the limit fell, another job took its share): the limit is somewhere
  between the two, and is remembered at :data:`STORM_LEARNED` of the rate cut from. Under
  the learned limit a 429 cuts (or makes a storm) only when :data:`NOISE_SHARE` of the
  recent answers, and at least :data:`NOISE_MIN` of them, were 429s: the provider's bucket
  refills slowly after a cut, and a stray 429 then says nothing about the limit;
- **slow approach**: below :data:`APPROACH_FROM` × ``learned`` the rate climbs back fast
  (:data:`FAST_PER_S` of the limit per second; after a halving, only
  :data:`RECOVER_PER_S`, as the limit is not known), then slowly (:data:`SLOW_PER_S`) up
  to :data:`HOLD` × ``learned``, where it stays;
- **rare, gentle probe**: after :data:`PROBE_QUIET_S` at that level without a 429, the rate
  climbs slowly to :data:`PROBE_STEP` above the learned limit and holds there for
  :data:`PROBE_S`. A 429 ends the probe (a cut, the limit remembered where it began);
  none, and the learned limit moves up to the probe's rate;
- **shared**: :meth:`RateLearner.adopt` takes another worker's rate and limit when they are
  news — ordered by the count of cuts each knows, so that a publication older than a cut
  does not undo it, and a worker behind in the same climb is not taken for a cut;
- **forget**: when the learned limit reaches the ceiling, or :data:`FORGET_AFTER` probes in
  a row found room, the answers say there is room again: the limit is forgotten and the
  rate climbs as it did before it knew one.

Without a learned limit the rate climbs to ``ceiling`` (configured: the figure it was told,
never exceeded) at :data:`FAST_PER_S` of the ceiling per second, or, ``auto``, grows by
:data:`AUTO_GROWTH_PER_S` of itself per second from the starting figure, with no ceiling
but :data:`AUTO_MAX_FACTOR` × the start. The rate only climbs on a success while it is in
use (sends in the last :data:`USE_WINDOW_S` at least :data:`IN_USE` of it): a limiter held
back by its in-flight cap learns nothing about the rate.

Every method takes ``now`` (seconds, any monotonic clock): the learner keeps no clock of its
own, so tests drive it in simulated time. Not thread-safe: its owner holds a lock.

Example::

    learner = RateLearner(start=16.0, ceiling=16.0)
    learner.on_throttle(now=3.0)        # 429s began at 16 req/s
    learner.learned                     # 14.4 (a fast climb overshoots)
    learner.cap                         # 12.24
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

#: Seconds after a cut during which 429s count with it: those of one burst arrive together,
#: and the provider's bucket (about a second of traffic) is empty just after the cut.
CUT_COOLDOWN_S = 1.0
#: Seconds after a cut within which another cut means the first was not deep enough.
STORM_S = 3.0
#: A cut sets the rate to this fraction of the learned limit.
CUT_TO = 0.85
#: A rate reached by a fast climb is remembered at this fraction (it overshot).
OVERSHOOT = 0.9
#: A rate reached by the slow approach is remembered at this fraction: the provider's
#: bucket (about a second of traffic) lets a rate a little over the limit through for
#: seconds, and the slow climb goes on meanwhile.
NEAR = 0.97
#: 429s that go on after a cut: the limit is remembered at this fraction of the rate cut to.
STORM_LEARNED = 0.75
#: Below this fraction of the learned limit the rate climbs fast; above it, slowly.
APPROACH_FROM = 0.9
#: The fraction of the learned limit the rate settles at.
HOLD = 0.98
#: Climbing speeds, as fractions of the limit (learned, or the ceiling) per second.
FAST_PER_S = 0.25
RECOVER_PER_S = 0.05
SLOW_PER_S = 0.02
#: ``auto`` without a learned limit: growth per second, as a fraction of the rate.
AUTO_GROWTH_PER_S = 0.15
#: ``auto``: the rate never goes above this many times its starting figure.
AUTO_MAX_FACTOR = 16.0
#: Seconds at the settled rate, without a 429, before a probe.
PROBE_QUIET_S = 20.0
#: A probe's rate, as a multiple of the learned limit.
PROBE_STEP = 1.05
#: Seconds a probe holds its rate (once reached) before it counts as having found room:
#: 5 % over the limit takes 20 s to empty a bucket of one second of traffic.
PROBE_S = 25.0
#: Probes in a row that find room, after which the learned limit is forgotten.
FORGET_AFTER = 3
#: The lowest rate, as a fraction of the starting figure.
FLOOR = 1 / 64
#: The rate climbs only while in use: sends in the last ``USE_WINDOW_S`` seconds at least
#: ``IN_USE`` of it.
USE_WINDOW_S = 2.0
IN_USE = 0.7
#: At most this many seconds of climbing are credited to one success (idle time is not).
MAX_STEP_S = 1.0
#: Below the learned limit (just after a cut, or after another worker's), a 429 cuts only
#: when at least this share of the answers of the last :data:`USE_WINDOW_S` were 429s. The
#: provider's bucket is near empty after a cut and refills at the limit less the rate, so
#: two sends that bunch (two workers' leases, a loop that stalled) meet a 429 now and then
#: although the rate is under the limit; cut for each, the learned limit ratchets down. A
#: limit that really fell answers many: those cut (and a storm halves).
NOISE_SHARE = 0.25
#: ... and at least this many 429s: with few answers since the cut's burst (a slow rate,
#: the first answers after it), one stray 429 alone would be a quarter of them.
NOISE_MIN = 2

State = Literal["configured", "searching", "learned", "probing"]


@dataclass(frozen=True, slots=True)
class Learned:
    """What a learner knows, kept for the next run and shared with other workers: the rate
    it sends at and the limit it learned, requests per second; ``at`` Unix time (seconds);
    ``cuts``: the cuts the account's workers made, as far as this learner knows (what was
    learned before a cut is stale after it)."""

    rate: float
    learned: float | None
    at: float = 0.0
    cuts: int = 0

    def to_json(self) -> dict[str, float | int | None]:
        return {"rate": self.rate, "learned": self.learned, "at": self.at, "cuts": self.cuts}

    @classmethod
    def from_json(cls, data: object) -> Learned | None:
        """The value :meth:`to_json` wrote; None for anything else (a value from an older
        or newer qwbatch, or hand-edited, is ignored rather than trusted)."""
        if not isinstance(data, dict):
            return None
        rate, learned, at = _positive(data.get("rate")), data.get("learned"), data.get("at")
        if rate is None or (learned is not None and _positive(learned) is None):
            return None
        cuts = data.get("cuts", 0)
        if not isinstance(cuts, int) or isinstance(cuts, bool) or cuts < 0:
            return None
        return cls(rate, _positive(learned), _positive(at) or 0.0, cuts)


def _positive(value: object) -> float | None:
    """``value`` as a float when it is a positive number, else None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


class RateLearner:
    """The rate a limiter may send at, learned from 429s (see the module docstring).

    ``start`` is the first rate (requests per second); ``ceiling`` the most it may ever
    send at (the configured figure), or None for ``auto``. ``learned`` seeds the limit
    remembered by an earlier run.
    """

    def __init__(self, *, start: float, ceiling: float | None, learned: float | None = None):
        if start <= 0 or (ceiling is not None and ceiling <= 0):
            raise ValueError("rates must be positive")
        self.auto = ceiling is None
        self.ceiling = ceiling if ceiling is not None else start * AUTO_MAX_FACTOR
        self.floor = start * FLOOR
        self.learned: float | None = None
        self.cap = min(start, self.ceiling)
        if learned is not None and learned > 0 and learned < self.ceiling:
            self.learned = max(learned, self.floor)
            self.cap = HOLD * self.learned
        self.probes_ok = 0  # probes in a row that found room
        self.cuts = 0  # cuts made by this learner or taken from another worker
        self._last_cut = float("-inf")
        self._last_grow: float | None = None
        self._settled_since: float | None = None  # at the hold rate since (no 429)
        self._probe_reached: float | None = None  # the probe's rate reached at
        self._probing = False
        self._fast_below = 0.0  # the rate climbs fast below this one
        self._sends: deque[float] = deque()
        self._answers: deque[tuple[float, bool]] = deque()  # (answered at, not a 429)

    # -- state --------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """``configured``: no limit learned, told a figure; ``searching``: ``auto`` and no
        limit learned yet; ``learned``: at or below the learned limit; ``probing``: above it."""
        if self._probing:
            return "probing"
        if self.learned is not None:
            return "learned"
        return "searching" if self.auto else "configured"

    def snapshot(self, at: float = 0.0) -> Learned:
        return Learned(rate=self.cap, learned=self.learned, at=at, cuts=self.cuts)

    def describe(self) -> str:
        """A few words for the status line."""
        state = self.state
        if state == "probing":
            return f"probing above learned {self.learned:.2f} req/s"
        if state == "learned":
            return f"learned {self.learned:.2f} req/s"
        if state == "searching":
            return "auto, searching upward"
        return "configured"

    # -- events -------------------------------------------------------------------------------

    def on_send(self, now: float) -> None:
        self._sends.append(now)
        while self._sends and now - self._sends[0] > USE_WINDOW_S:
            self._sends.popleft()

    def on_success(
        self, now: float, rate_now: float | None = None, in_use: bool | None = None
    ) -> None:
        """An answer that was not a 429: climb, as the module docstring says.

        ``rate_now`` is the rate in force (the ramp applied); the cap when not given.
        ``in_use``: whether the rate holds sends back, when the caller knows better than
        this worker's own sends (a rate shared by workers); judged from the sends if None.
        """
        self._answer(now, ok=True)
        last, self._last_grow = self._last_grow, now
        if last is None:
            return
        step = min(max(now - last, 0.0), MAX_STEP_S)
        rate = self.cap if rate_now is None else min(rate_now, self.cap)
        if not (self._in_use(now, rate) if in_use is None else in_use):
            self._settled_since = None if self._probing else self._settled_since
            return
        self._climb(now, step)

    def on_throttle(
        self, now: float, sent_at: float | None = None, rate: float | None = None
    ) -> bool:
        """A 429 for a request sent at ``sent_at`` (None: not known): cut and remember,
        unless it was sent (answered) within :data:`CUT_COOLDOWN_S` after the last cut, or
        before it. Whether it cut. ``rate``: the rate in force when it was sent, when lower
        than the cap (the limiter's ramp): that is where 429s began."""
        share, count = self._answer(now, ok=False)
        since = (now if sent_at is None else sent_at) - self._last_cut
        if since < CUT_COOLDOWN_S:
            return False
        began = self.cap if rate is None else max(self.floor, min(self.cap, rate))
        storm = since < STORM_S
        near = self.learned is not None and began >= APPROACH_FROM * self.learned
        stray = share < NOISE_SHARE or count < NOISE_MIN
        if self.learned is not None and (storm or not near) and stray:
            return False  # under the learned limit, a stray 429: the bucket refilling
        remembered = began * STORM_LEARNED if storm else began * (NEAR if near else OVERSHOOT)
        self.learned = max(self.floor, remembered)
        self.cap = CUT_TO * self.learned
        if storm:
            self.cap = min(self.cap, began / 2)
        self._fast_below = self.cap  # the limit is near: no fast climb back to it
        self.cap = max(self.floor, self.cap)
        self._last_cut = now
        self._probing = False
        self._probe_reached = None
        self._settled_since = None
        self.probes_ok = 0
        self.cuts += 1
        return True

    def adopt(self, other: Learned, now: float) -> None:
        """Take what another worker learned: its rate and limit, when it is news.

        Workers publish every half second or so, so what one reads may be older than what
        it knows. ``cuts`` orders them: a publication that knows fewer cuts than this
        learner was made before its last cut and is ignored (taken, it would undo the cut).
        One that knows more carries a cut made elsewhere, taken as a cut made ``now`` when it
        lowers the rate (429s for requests sent before it count with it). One that knows the
        same cuts is taken only when its rate is higher (a climb or a probe further along):
        a lower one is a worker behind in the same climb, and taking its lag for a cut would
        turn the next stray 429 into a storm, and halve the rate.
        """
        if other.cuts < self.cuts:
            return
        rate = max(self.floor, min(other.rate, self.ceiling))
        if other.cuts == self.cuts and rate <= self.cap:
            return
        if rate < self.cap:
            self._last_cut = now
            self._settled_since = None
        self.cuts = other.cuts
        self.cap = rate
        self.learned = other.learned
        self._fast_below = self.cap
        self._probing = self.learned is not None and self.cap > self.learned

    def _answer(self, now: float, *, ok: bool) -> tuple[float, int]:
        """Count an answer; the share and the number of 429s among the answers of the last
        :data:`USE_WINDOW_S`, leaving out those of the cut's own burst (answered within
        :data:`CUT_COOLDOWN_S` after it)."""
        answers = self._answers
        answers.append((now, ok))
        while answers and now - answers[0][0] > USE_WINDOW_S:
            answers.popleft()
        since = self._last_cut + CUT_COOLDOWN_S
        recent = [fine for at, fine in answers if at >= since]
        throttled = recent.count(False)
        return throttled / max(len(recent), 1), throttled

    # -- climbing -----------------------------------------------------------------------------

    def _in_use(self, now: float, rate: float) -> bool:
        sent = sum(1 for t in self._sends if now - t <= USE_WINDOW_S)
        return sent >= IN_USE * rate * USE_WINDOW_S

    def _climb(self, now: float, step: float) -> None:
        learned = self.learned
        if learned is None:
            if self.auto:
                self.cap = min(self.ceiling, self.cap * (1 + AUTO_GROWTH_PER_S * step))
            else:
                self.cap = min(self.ceiling, self.cap + FAST_PER_S * self.ceiling * step)
            return
        hold, probe = HOLD * learned, min(PROBE_STEP * learned, self.ceiling)
        if self.cap < APPROACH_FROM * learned:
            speed = FAST_PER_S if self.cap < self._fast_below else RECOVER_PER_S
            self.cap = min(APPROACH_FROM * learned, self.cap + speed * learned * step)
        elif not self._probing:
            if self.cap < hold:
                self.cap = min(hold, self.cap + SLOW_PER_S * learned * step)
                self._settled_since = None
            elif self._settled_since is None:
                self._settled_since = now
            elif now - self._settled_since >= PROBE_QUIET_S:
                self._probing = True
        else:
            if self.cap < probe:
                self.cap = min(probe, self.cap + SLOW_PER_S * learned * step)
            elif self._probe_reached is None:
                self._probe_reached = now
            elif now - self._probe_reached >= PROBE_S:
                self._probe_found_room(probe)

    def _probe_found_room(self, probe: float) -> None:
        self._probing = False
        self._probe_reached = None
        self._settled_since = None
        self.probes_ok += 1
        if probe >= self.ceiling or self.probes_ok >= FORGET_AFTER:
            self.learned = None  # there is room again: climb as before a limit was known
            self.probes_ok = 0
        else:
            self.learned = probe
            self._fast_below = APPROACH_FROM * probe
            self.cap = HOLD * probe
