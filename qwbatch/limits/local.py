"""One model's limiter in this process: pacing, a cap on requests in flight, and adaptation.

The provider limits each model per account (``docs/providers/dashscope.md`` §6): requests per
second, burst protection ("Request rate increased too quickly") and requests in flight. A
:class:`ModelLimiter` keeps this process under them:

- **in flight**: a :class:`~qwbatch.limits.gate.Gate` of ``max_in_flight`` slots, held from
  before the send until the answer (for async tasks, until the task ends). This cap is per
  process, also when the rate is shared (see :mod:`qwbatch.limits.shared` for why);
- **pacing**: each request reserves the next send time, ``1 / rate`` seconds after the one
  before (never a burst of more than one), so waiters sleep once, to their own time;
- **ramp**: after a start or an idle spell the rate climbs from ``ramp_start × rps`` to
  ``rps`` over ``ramp_s`` seconds, because the provider punishes sudden increases;
- **learning**: a :class:`~qwbatch.limits.learning.RateLearner` moves the rate: a 429 cuts it
  (at most once per second, however many answers of one burst come back) and remembers the
  rate at which 429s began; successes bring it back slowly towards that learned limit, not
  the ceiling, with a rare, gentle probe above it. ``LimitSpec.auto`` (``--rps auto``)
  searches upward from the figure it starts at as well. A ``Retry-After`` from the server
  pauses sending for that long.

With a :class:`SharedBudget` (see :mod:`qwbatch.limits.shared`) the rate tokens are also
leased from a limit that every worker of the account shares, which ramps for the account as
a whole (:mod:`qwbatch.limits.ramp`); a 429 is then learned at the shared limit's rate at
its send — what the account received — and drops the rate tokens this process holds (they
would go out late, into the same crowd).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from qwbatch.limits.gate import Gate, TokenPool
from qwbatch.limits.learning import Learned, RateLearner
from qwbatch.limits.ramp import ramp_fraction

#: Seconds of history kept for the status line (the 429s-per-minute count needs 60).
HISTORY_S = 60.0
#: Seconds without a send after which the next send ramps up again from the start.
IDLE_RESTART_S = 30.0
#: Seconds after pacing last made a request wait during which the rate counts as in use
#: (held back by it): the learned rate climbs only then.
IN_USE_S = 2.0

#: This task's last send: its clock time and the account's rate then (the shared limit's
#: when sharing, else this limiter's, ramp applied). A 429 is judged by when its request
#: went out, and learned at that rate (the engine reports it after the slot, in the task).
_SENT_AT: contextvars.ContextVar[tuple[float, float] | None] = contextvars.ContextVar(
    "qwbatch_limits_sent_at", default=None
)


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """The limits for one model: ``rps`` requests per second, ``max_in_flight`` at once.

    ``auto``: ``rps`` is where the search for the account's limit starts, not a ceiling.
    """

    rps: float
    max_in_flight: int
    auto: bool = False
    #: Seconds to ramp from ``ramp_start × rps`` to the full rate (burst protection).
    ramp_s: float = 5.0
    #: Fraction of ``rps`` to start at.
    ramp_start: float = 0.25


class SharedBudget(Protocol):
    """What a limiter needs from limits shared with other processes."""

    #: Rate tokens leased from the shared limit; opened when there is none.
    pool: TokenPool

    def start(self, rate: Callable[[], float], learning: ModelLimiter | None = None) -> None:
        """Begin leasing; ``rate()`` is the limiter's current rate (leases are sized to it).
        ``learning``: the limiter whose learned limit is shared with the other workers."""

    def shared_rate(self) -> float | None:
        """The shared limit's rate now (the account's, its ramp applied); None when not
        sharing."""

    def binding(self) -> bool | None:
        """Whether the shared rate held this worker back lately (its rate is in use); None
        when not sharing (judge by this worker's own sends)."""

    def describe(self) -> str:
        """How limits are shared right now, for the status line."""

    def close(self) -> None:
        """Give back whatever is held."""


class ModelLimiter:
    """Token pacing + in-flight cap with ramp and additive-increase / multiplicative-decrease.

    Thread-safe; :meth:`slot` may be awaited from any thread's event loop. ``clock`` is
    ``time.monotonic`` unless a test hands in another.
    """

    def __init__(
        self,
        spec: LimitSpec,
        *,
        name: str = "",
        shared: SharedBudget | None = None,
        local_reason: str | None = None,
        learned: Learned | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if spec.rps <= 0 or spec.max_in_flight <= 0:
            raise ValueError("rps and max_in_flight must be positive")
        self.spec = spec
        self.name = name
        self.shared = shared
        self.local_reason = local_reason
        self._clock = clock
        self._lock = threading.Lock()
        self._gate = Gate(spec.max_in_flight)  # this process's requests in flight
        #: The rate, moved by 429s and successes; ``learned`` is an earlier run's (or another
        #: worker's) limit to start from.
        self.learner = RateLearner(
            start=learned.rate if learned and spec.auto else spec.rps,
            ceiling=None if spec.auto else spec.rps,
            learned=learned.learned if learned else None,
        )
        self._ramp_from: float | None = None
        self._next_send = 0.0
        self._paused_until = 0.0
        self._held_at = float("-inf")  # the last time pacing made a request wait
        self._epoch = 0  # bumped by every cut: reservations made before it are redone
        self._sending = 0
        self._sends: deque[float] = deque()
        self._throttles: deque[float] = deque()
        self.sent = 0
        self.throttled = 0
        if shared is not None:
            shared.start(self.current_rate, self)

    # -- state ----------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return self._sending

    def describe_sharing(self) -> str:
        """How this limiter's limits are shared, for the status line."""
        if self.shared is not None:
            return self.shared.describe()
        return f"local to this process ({self.local_reason or 'not shared'})"

    def current_rate(self) -> float:
        """Requests per second allowed right now (ramp and adaptive cut applied)."""
        with self._lock:
            return self._rate_locked(self._clock())

    def send_times(self) -> list[float]:
        """Clock times of the sends of the last minute."""
        with self._lock:
            return list(self._sends)

    def throttle_times(self) -> list[float]:
        """Clock times of the 429s of the last minute."""
        with self._lock:
            return list(self._throttles)

    def paused_until(self) -> float:
        """Clock time before which nothing is sent (``Retry-After``)."""
        with self._lock:
            return self._paused_until

    def learned(self) -> Learned:
        """The rate and the learned limit now (``at``: Unix time), to keep and to share."""
        with self._lock:
            return self.learner.snapshot(at=time.time())

    def adopt(self, other: Learned) -> None:
        """Take the rate and limit another worker learned."""
        with self._lock:
            before = self.learner.cap
            self.learner.adopt(other, self._clock())
            if self.learner.cap < before:
                self._epoch += 1  # sends reserved at the old rate queue again

    def learning(self) -> str:
        """Whether the rate is configured, learned or probing, for the status line."""
        with self._lock:
            return self.learner.describe()

    def _rate_locked(self, now: float) -> float:
        spec = self.spec
        frac = 1.0
        if self._ramp_from is not None:
            frac = ramp_fraction(now - self._ramp_from, spec.ramp_s, spec.ramp_start)
        return max(self.learner.cap * frac, self.learner.floor)

    # -- use ------------------------------------------------------------------------------

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one request slot for the block; the send happens at the block's start.

        In order: a place among this process's ``max_in_flight``; the paced send time (ramp,
        cut, ``Retry-After``); then, with a shared rate, a rate token, waited for until its
        turn (a lease drips at the shared limit's pace). The token comes last so that it is
        spent as soon as it is granted: every worker's sends then follow the shared limit's
        grants, which keeps them, together, inside the provider's own bucket.
        """
        await self._gate.acquire()
        try:
            await self._pace()
            if self.shared is not None:
                await self.shared.pool.take()
            _SENT_AT.set(await self._sit_out_pause())  # a 429 may have come while we waited
            try:
                yield
            finally:
                with self._lock:
                    self._sending -= 1
        finally:
            self._gate.release()

    async def _pace(self) -> None:
        """Wait for this request's send time: ``1 / rate`` after the one before it."""
        while True:
            with self._lock:
                now = self._clock()
                if self._ramp_from is None or (
                    self._sends and now - self._sends[-1] > IDLE_RESTART_S
                ):
                    self._ramp_from = now
                at = max(now, self._next_send, self._paused_until)
                self._next_send = at + 1.0 / self._rate_locked(at)
                epoch = self._epoch
                if at > now:
                    self._held_at = now
            if at <= now:
                return
            await asyncio.sleep(at - now)
            with self._lock:
                if self._epoch == epoch:
                    return
            # Throttled while we slept: queue again behind the pause, at the new rate.

    async def _sit_out_pause(self) -> tuple[float, float]:
        """Wait until no ``Retry-After`` pause holds, then count the send; its time and the
        account's rate then: the shared limit's when sharing (every worker's sends
        together), else this limiter's."""
        while True:
            with self._lock:
                now = self._clock()
                if now >= self._paused_until:
                    self._sending += 1
                    self._record_send_locked(now)
                    shared = self.shared.shared_rate() if self.shared is not None else None
                    return now, self._rate_locked(now) if shared is None else shared
                wait = self._paused_until - now
            await asyncio.sleep(wait)

    def _record_send_locked(self, now: float) -> None:
        self.sent += 1
        self._sends.append(now)
        self.learner.on_send(now)
        _trim(self._sends, now)

    def on_success(self) -> None:
        """An answer that was not a 429: the rate climbs (see :mod:`qwbatch.limits.learning`)."""
        with self._lock:
            now = self._clock()
            # The rate is in use when it holds sends back: pacing made one wait lately, or (a
            # rate shared by workers, of which this one sends a share) the shared limit held
            # a lease back. Requests held back by the in-flight cap do not count.
            held = now - self._held_at <= IN_USE_S
            in_use = held or (self.shared is not None and bool(self.shared.binding()))
            self.learner.on_success(now, self._rate_locked(now), in_use)

    def on_throttle(self, retry_after: float | None = None) -> None:
        """A 429: cut the rate and remember where 429s began; pause when the server said how
        long to wait."""
        with self._lock:
            now = self._clock()
            self.throttled += 1
            self._throttles.append(now)
            _trim(self._throttles, now)
            sent = _SENT_AT.get()
            sent_at, at_send = sent if sent is not None else (None, self._rate_locked(now))
            if self.learner.on_throttle(now, sent_at, at_send):
                self._ramp_from = now - self.spec.ramp_s  # a cut ends the ramp
            if retry_after:
                self._paused_until = max(self._paused_until, now + retry_after)
            # Reservations made at the old rate are void: queue again at the new rate, from
            # the last send (not from now: the throttled requests come straight back, and
            # must not go out together) or the pause.
            last = self._sends[-1] if self._sends else now
            self._next_send = max(now, last + 1.0 / self._rate_locked(now), self._paused_until)
            self._epoch += 1
        if self.shared is not None:
            # Tokens leased before the 429 would go out late, bunched with other workers'.
            self.shared.pool.drain()

    def close(self) -> None:
        """Stop leasing shared rate tokens (the limiter is being replaced)."""
        if self.shared is not None:
            self.shared.close()


def _trim(times: deque[float], now: float) -> None:
    while times and now - times[0] > HISTORY_S:
        times.popleft()
