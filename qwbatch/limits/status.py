"""What the limiters are doing, as status lines for the run log and the CLI.

Example line::

    limits qwen-image-2.0: 1.96 req/s, limit 2.00 of 2.00 req/s (configured), in flight 3/4,
    429s 0/min, shared via Prefect limit 'qwbatch-rps:qwen-image-2.0@dashscope-intl…' (leases of 1)

The part in brackets says where the limit comes from: ``configured`` (the figure the run was
told), ``learned 7.90 req/s`` (where 429s began; see :mod:`qwbatch.limits.learning`),
``probing above learned 7.90 req/s``, or ``auto, searching upward`` (``--rps auto``, with
``of auto from 2.00 req/s`` as the ceiling).

``reporting(sink)`` sends such a line per active model to ``sink`` every ``every_s`` seconds
while a run goes, from a daemon thread, and a last one when the block ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from qwbatch.limits.local import ModelLimiter
from qwbatch.limits.registry import LIMITERS, LimiterRegistry

#: Seconds over which the current rate is measured.
RATE_WINDOW_S = 10.0


@dataclass(frozen=True, slots=True)
class LimitStatus:
    """One model's limiter at one moment. Rates are requests per second."""

    model: str
    rate: float
    limit: float
    ceiling: float
    in_flight: int
    max_in_flight: int
    throttled_per_min: int
    sent: int
    sharing: str
    #: Where the limit comes from: configured, learned, probing, searching (see above).
    learning: str = "configured"
    #: ``ceiling`` is where ``--rps auto`` started, not a ceiling.
    auto: bool = False

    def line(self) -> str:
        ceiling = f"auto from {self.ceiling:.2f}" if self.auto else f"{self.ceiling:.2f}"
        return (
            f"limits {self.model}: {self.rate:.2f} req/s, limit {self.limit:.2f} of "
            f"{ceiling} req/s ({self.learning}), in flight {self.in_flight}/"
            f"{self.max_in_flight}, 429s {self.throttled_per_min}/min, {self.sharing}"
        )


def status_of(limiter: ModelLimiter, now: float | None = None) -> LimitStatus:
    """The status of ``limiter``; the rate counts sends of the last :data:`RATE_WINDOW_S`."""
    now = time.monotonic() if now is None else now
    sends = limiter.send_times()
    recent = [t for t in sends if now - t <= RATE_WINDOW_S]
    # Until a full window has passed, divide by the time since the first send.
    span = min(RATE_WINDOW_S, now - sends[0]) if sends else RATE_WINDOW_S
    return LimitStatus(
        model=limiter.name,
        rate=len(recent) / max(span, 1.0),
        limit=limiter.current_rate(),
        ceiling=limiter.spec.rps,
        in_flight=limiter.in_flight,
        max_in_flight=limiter.spec.max_in_flight,
        throttled_per_min=sum(1 for t in limiter.throttle_times() if now - t <= 60.0),
        sent=limiter.sent,
        sharing=limiter.describe_sharing(),
        learning=limiter.learning(),
        auto=limiter.spec.auto,
    )


class _Reporter:
    """A daemon thread that sends status lines to every registered sink."""

    def __init__(self, registry: LimiterRegistry) -> None:
        self._registry = registry
        self._lock = threading.Lock()
        self._sinks: dict[int, tuple[Callable[[str], None], float]] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_id = 0

    def add(self, sink: Callable[[str], None], every_s: float) -> int:
        with self._lock:
            self._next_id += 1
            self._sinks[self._next_id] = (sink, every_s)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="qwbatch-limits-status", daemon=True
                )
                self._thread.start()
            return self._next_id

    def remove(self, sink_id: int) -> None:
        with self._lock:
            self._sinks.pop(sink_id, None)
        self._wake.set()

    def _loop(self) -> None:
        last: dict[int, float] = {}
        while True:
            with self._lock:
                sinks = dict(self._sinks)
                if not sinks:
                    self._thread = None
                    return
            now = time.monotonic()
            for sink_id, (sink, every_s) in sinks.items():
                started = last.setdefault(sink_id, now)
                if now - started >= every_s:
                    last[sink_id] = now
                    for line in lines(self._registry, active_within=every_s):
                        sink(line)
            self._wake.wait(min(every for _, every in sinks.values()) / 4)
            self._wake.clear()


def lines(registry: LimiterRegistry = LIMITERS, *, active_within: float | None = None) -> list[str]:
    """Status lines of the limiters that sent or held requests within ``active_within`` s."""
    now = time.monotonic()
    out = []
    for limiter in registry.limiters():
        sends = limiter.send_times()
        recent = bool(sends) and (active_within is None or now - sends[-1] <= active_within)
        if recent or limiter.in_flight:
            out.append(status_of(limiter, now).line())
    return out


_REPORTERS: dict[int, _Reporter] = {}
_REPORTERS_LOCK = threading.Lock()


@contextmanager
def reporting(
    sink: Callable[[str], None], every_s: float, registry: LimiterRegistry = LIMITERS
) -> Iterator[None]:
    """Send status lines to ``sink`` every ``every_s`` seconds in the block, and once at its end."""
    with _REPORTERS_LOCK:
        reporter = _REPORTERS.setdefault(id(registry), _Reporter(registry))
    sink_id = reporter.add(sink, every_s)
    began = time.monotonic()
    try:
        yield
    finally:
        reporter.remove(sink_id)
        for line in lines(registry, active_within=time.monotonic() - began):
            sink(line)
