"""Throttling: a token bucket per model (requests per second) and an in-flight cap per model.

Everything here runs on the server's event loop thread, so no locks are needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens per second up to ``capacity``; one request takes one token."""

    rate: float
    capacity: float
    clock: Callable[[], float] = time.monotonic
    tokens: float = field(init=False)
    stamp: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = self.capacity
        self.stamp = self.clock()

    def try_take(self) -> bool:
        """Take a token if one is there; False means the caller is over the rate."""
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class RateLimiter:
    """Token buckets by key (a model name, or "tasks"); rebuilt when a key's rate changes."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def allow(self, key: str, rate: float, burst: float | None = None) -> bool:
        """Whether one more request for ``key`` fits ``rate`` (per second) and ``burst``."""
        capacity = burst if burst is not None else max(1.0, rate)
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate != rate or bucket.capacity != capacity:
            bucket = self._buckets[key] = TokenBucket(rate, capacity, self._clock)
        return bucket.try_take()

    def clear(self) -> None:
        self._buckets.clear()


class InFlight:
    """Requests currently being answered, per model."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def count(self, model: str) -> int:
        return self._counts.get(model, 0)

    def enter(self, model: str) -> None:
        self._counts[model] = self.count(model) + 1

    def leave(self, model: str) -> None:
        self._counts[model] = max(0, self.count(model) - 1)
