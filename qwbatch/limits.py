"""Per-model request limits: a token bucket for requests per second and a cap on requests
in flight, shared by every shard in this process.

The provider limits each model per account (``../shared/dashscope-api.md`` §6): requests per
second, burst protection ("Request rate increased too quickly") and requests in flight. A
:class:`ModelLimiter` keeps a run under both, and adapts: a 429 halves the rate (honouring
``Retry-After``), each success creeps it back up by a small step, never above the ceiling.

Shards run as Prefect tasks on a thread pool, each with its own event loop, so the limiter is
guarded by a ``threading.Lock`` and waits with ``asyncio.sleep``: it is shared across loops.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """The ceiling for one model: ``rps`` requests per second, ``max_in_flight`` at once."""

    rps: float
    max_in_flight: int
    #: Seconds to ramp from a fraction of ``rps`` to the full rate (burst protection).
    ramp_s: float = 5.0
    #: Fraction of ``rps`` to start at.
    ramp_start: float = 0.25


class ModelLimiter:
    """Token bucket + in-flight cap with additive-increase / multiplicative-decrease."""

    def __init__(self, spec: LimitSpec) -> None:
        if spec.rps <= 0 or spec.max_in_flight <= 0:
            raise ValueError("rps and max_in_flight must be positive")
        self.spec = spec
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._rate_cap = spec.rps  # lowered by throttling, raised by success
        self._tokens = 1.0
        self._last = self._started
        self._in_flight = 0
        self._paused_until = 0.0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.throttled = 0

    def current_rate(self) -> float:
        """Requests per second allowed right now (ramp and adaptive cut applied)."""
        now = time.monotonic()
        ramp = self.spec.ramp_s
        if ramp > 0 and now - self._started < ramp:
            frac = self.spec.ramp_start + (1 - self.spec.ramp_start) * (now - self._started) / ramp
        else:
            frac = 1.0
        return max(min(self._rate_cap, self.spec.rps * frac), self.spec.rps / 64)

    def _try_take(self) -> float | None:
        """Take a slot if one is free (0.0); else how long to wait for a token (seconds), or
        None while every in-flight slot is taken (wait for one to be given back)."""
        now = time.monotonic()
        if now < self._paused_until:
            return self._paused_until - now
        rate = self.current_rate()
        # Burst at most one token: the provider's burst protection punishes spikes.
        self._tokens = min(1.0, self._tokens + (now - self._last) * rate)
        self._last = now
        if self._in_flight >= self.spec.max_in_flight:
            return None
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self._in_flight += 1
            return 0.0
        return (1.0 - self._tokens) / rate

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one request slot for the duration of the block.

        While every in-flight slot is taken, a caller sleeps until one is given back (woken
        in turn, on whichever event loop it waits), rather than polling: hundreds of shard
        tasks polling a full cap would keep the event loop busy doing nothing.
        """
        while True:
            waiter: asyncio.Future[None] | None = None
            with self._lock:
                wait = self._try_take()
                if wait is None:
                    waiter = asyncio.get_running_loop().create_future()
                    self._waiters.append(waiter)
            if waiter is not None:
                await self._wait_for_slot(waiter)
            elif wait:
                await asyncio.sleep(wait)  # until the next token
            else:
                break
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
                self._wake_one()

    async def _wait_for_slot(self, waiter: asyncio.Future[None]) -> None:
        try:
            await waiter
        except asyncio.CancelledError:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                else:  # woken as it was cancelled: pass the free slot on
                    self._wake_one()
            raise

    def _wake_one(self) -> None:
        """Wake the longest waiter for an in-flight slot (call with the lock held)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            try:
                waiter.get_loop().call_soon_threadsafe(_wake, waiter)
            except RuntimeError:  # its loop is closed: nobody waits there any more
                continue
            return

    def on_success(self) -> None:
        """Additive increase: creep back towards the ceiling."""
        with self._lock:
            self._rate_cap = min(self.spec.rps, self._rate_cap + self.spec.rps * 0.05)

    def on_throttle(self, retry_after: float | None = None) -> None:
        """Multiplicative decrease, and a pause when the server said how long to wait."""
        with self._lock:
            self.throttled += 1
            self._rate_cap = max(self.spec.rps / 64, self._rate_cap / 2)
            self._tokens = 0.0
            if retry_after:
                self._paused_until = max(self._paused_until, time.monotonic() + retry_after)


class LimiterRegistry:
    """One limiter per (provider base URL, model) in this process, created on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limiters: dict[tuple[str, str], ModelLimiter] = {}

    def get(self, scope: str, model: str, spec: LimitSpec) -> ModelLimiter:
        with self._lock:
            limiter = self._limiters.get((scope, model))
            if limiter is None or limiter.spec != spec:
                limiter = ModelLimiter(spec)
                self._limiters[(scope, model)] = limiter
            return limiter


#: The process-wide registry: every shard of every run in this process shares it.
LIMITERS = LimiterRegistry()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
