"""Progress of a run as it renders: a thread-safe tally fed by the engine's records.

Shards run as Prefect tasks in threads of the process that started the flow, each with its
own event loop, so one :class:`ProgressTracker` per run can count them all: the CLI creates
it and registers it under the run id (:func:`watching`); the runner looks it up
(:func:`tracker_for`) and hands the engine its :meth:`~ProgressTracker.on_records`. Shards on
other machines (deployments) find no tracker and report nothing; their catalog parts are the
record.

Counting is in images. The work done counts a request for ``n`` images as ``n`` when it ends,
whatever its outcome (the bar, the rate and the ETA follow it); the headline counts only the
images made: a failed request is not an image. Rates are images per second of work done
since the plan was known; the ETA assumes that rate holds. Money is in the run's currency.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from qwbatch.core.types import CatalogRecord
from qwbatch.plan import Plan

#: Statuses that count as a good outcome; every other one counts as a failure.
GOOD_STATUSES = frozenset({"succeeded", "deduplicated"})


@dataclass(frozen=True, slots=True)
class ProgressSnapshot:
    """One consistent reading of a tracker. Times in seconds, money in ``currency``."""

    planned: bool
    total_images: int
    done_images: int
    succeeded_images: int
    failed_images: int
    total_requests: int
    done_requests: int
    already_rendered: int
    cost: float
    currency: str
    budget: float | None
    estimated_cost: float | None
    elapsed_s: float
    last_failure: str | None

    @property
    def fraction(self) -> float:
        """Share of the planned images done, 0.0 to 1.0 (1.0 when nothing was to be done)."""
        return min(1.0, self.done_images / self.total_images) if self.total_images else 1.0

    @property
    def rate(self) -> float:
        """Images finished per second so far."""
        return self.done_images / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current rate; None until a rate is known."""
        remaining = self.total_images - self.done_images
        if remaining <= 0:
            return 0.0
        return remaining / self.rate if self.rate > 0 else None

    def line(self) -> str:
        """A one-line account, for logs: counts, rate, spend, ETA, failures."""
        if not self.planned:
            return "progress: planning…"
        parts = [
            f"progress: {self.succeeded_images}/{self.total_images} images made",
            f"{self.fraction:.0%} done",
            f"{self.rate:.2f} img/s",
            self.spend_text(),
            f"ETA {format_duration(self.eta_s)}",
            f"{self.failed_images} failed",
        ]
        if self.already_rendered:
            parts.append(f"{self.already_rendered} rows already rendered")
        return ", ".join(parts)

    def spend_text(self) -> str:
        """``spent 0.42 USD``, against the budget when there is one, else the estimate."""
        spent = f"spent {self.cost:.4f}"
        if self.budget is not None:
            return f"{spent} of budget {self.budget:.4f} {self.currency}"
        if self.estimated_cost is not None:
            return f"{spent} of est. {self.estimated_cost:.4f} {self.currency}"
        return f"{spent} {self.currency}"


def format_duration(seconds: float | None) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressTracker:
    """Counts a run's finished requests, from any thread.

    ``budget`` (in ``currency``) is shown against the spend when given. ``clock`` returns
    seconds (tests pass their own).
    """

    def __init__(
        self,
        *,
        budget: float | None = None,
        currency: str = "USD",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._began = clock()
        self.budget = budget
        self.currency = currency
        self._planned = False
        self._total_images = 0
        self._total_requests = 0
        self._already = 0
        self._estimated: float | None = None
        self._done_images = 0
        self._done_requests = 0
        self._succeeded = 0
        self._failed = 0
        self._cost = 0.0
        self._last_failure: str | None = None
        self._seen: set[str] = set()

    def on_plan(self, plan: Plan, *, estimated_cost: float | None = None, currency: str) -> None:
        """The plan is known: totals to count towards, and the clock for the rate starts."""
        with self._lock:
            self._planned = True
            self._total_images = plan.images
            self._total_requests = plan.requests
            self._already = plan.deduplicated
            self._estimated = estimated_cost
            self.currency = currency
            self._began = self._clock()

    def on_records(self, records: Sequence[CatalogRecord]) -> None:
        """One finished request's records (and its folded duplicates'), from the engine."""
        # Per request: n images, of which those with a good record (any row) are good; folded
        # duplicates repeat their request's records under other row ids and add nothing.
        requests: dict[str, tuple[int, set[int], set[int]]] = {}
        failure: str | None = None
        for record in records:
            n, good, succeeded = requests.setdefault(record.request_key, (record.n, set(), set()))
            index = record.image_index if record.image_index is not None else -1
            if record.status in GOOD_STATUSES and index >= 0:
                good.add(index)
                if record.status == "succeeded":
                    succeeded.add(index)
            elif record.status not in GOOD_STATUSES and failure is None:
                failure = f"{record.row_id}: {record.error_code or record.status}"
        cost = sum(record.cost for record in records)
        with self._lock:
            self._cost += cost
            for key, (n, good, succeeded) in requests.items():
                if key in self._seen:
                    continue
                self._seen.add(key)
                self._done_requests += 1
                self._done_images += n
                self._succeeded += len(succeeded)
                self._failed += max(0, n - len(good))
            if failure is not None:
                self._last_failure = failure

    def snapshot(self) -> ProgressSnapshot:
        with self._lock:
            return ProgressSnapshot(
                planned=self._planned,
                total_images=self._total_images,
                done_images=self._done_images,
                succeeded_images=self._succeeded,
                failed_images=self._failed,
                total_requests=self._total_requests,
                done_requests=self._done_requests,
                already_rendered=self._already,
                cost=self._cost,
                currency=self.currency,
                budget=self.budget,
                estimated_cost=self._estimated,
                elapsed_s=max(0.0, self._clock() - self._began),
                last_failure=self._last_failure,
            )


# Trackers of the runs this process is watching, by run id.
_TRACKERS: dict[str, ProgressTracker] = {}
_TRACKERS_LOCK = threading.Lock()


@contextmanager
def watching(run_id: str, tracker: ProgressTracker) -> Iterator[ProgressTracker]:
    """Register ``tracker`` for ``run_id`` while the block runs."""
    with _TRACKERS_LOCK:
        _TRACKERS[run_id] = tracker
    try:
        yield tracker
    finally:
        with _TRACKERS_LOCK:
            _TRACKERS.pop(run_id, None)


def tracker_for(run_id: str) -> ProgressTracker | None:
    """The tracker watching ``run_id`` in this process, if any."""
    with _TRACKERS_LOCK:
        return _TRACKERS.get(run_id)
