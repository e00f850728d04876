"""What was sent and billed: one request's ledger, and the totals of everything an engine ran.

A :class:`Ledger` follows one request across its attempts (and, through the journal, across
resumes); :class:`Totals` sums what every request an engine ran was billed, may have been
billed (ambiguous calls), recovered and left. Both are plain counters; the journal keeps them
across crashes (:class:`~qwbatch.render.journal.Finished`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qwbatch.core.stop import Guard
from qwbatch.core.types import CatalogRecord
from qwbatch.render.journal import Finished


@dataclass(slots=True)
class Ledger:
    """Bookkeeping for one request across its attempts (and across resumes, via the journal)."""

    attempts: int = 0
    ambiguous: int = 0
    task_id: str | None = None
    #: When an async submission whose answer the journal never saw was sent (a resume).
    orphan_since: float | None = None
    billed: int = 0
    extra_images: int = 0
    extra_cost: float = 0.0
    recovered: int = 0
    #: Held while the request is in a step a stop must not cut: a call on the wire, a harvest.
    guarded: Guard = field(default_factory=Guard)

    def finished(self, records: list[CatalogRecord]) -> Finished:
        """The request's records and what it cost, as the journal keeps them."""
        return Finished(
            records=records,
            billed_images=self.billed,
            possible_extra_images=self.extra_images,
            possible_extra_cost=self.extra_cost,
            ambiguous_calls=self.ambiguous,
            recovered_tasks=self.recovered,
        )


@dataclass(slots=True)
class Totals:
    """Counters summed over everything one engine ran (images; cost in the run's currency)."""

    #: Images the provider billed (its usage counts).
    billed_images: int = 0
    #: Images that ambiguous calls may have billed without our seeing them, and their cost.
    possible_extra_images: int = 0
    possible_extra_cost: float = 0.0
    #: Calls whose answer was lost after they were sent.
    ambiguous_calls: int = 0
    #: Async tasks found again after their creation answer was lost.
    recovered_tasks: int = 0
    #: Requests not finished because the run was stopped.
    left: int = 0

    def billed(self, ledger: Ledger, images: int) -> None:
        """The provider billed ``images`` images for the ledger's request."""
        self.billed_images += images
        ledger.billed += images

    def ambiguous(self, ledger: Ledger, n: int, unit_price: float, calls: int = 1) -> None:
        """``calls`` calls of ``n`` images each may have been billed without an answer."""
        extra_cost = calls * n * unit_price
        self.ambiguous_calls += calls
        self.possible_extra_images += calls * n
        self.possible_extra_cost += extra_cost
        ledger.extra_images += calls * n
        ledger.extra_cost += extra_cost

    def recovered(self, ledger: Ledger) -> None:
        """A lost async task was found again (harvested, not paid twice)."""
        ledger.recovered += 1
        self.recovered_tasks += 1

    def restore(self, finished: Finished) -> list[CatalogRecord]:
        """Count a request the journal says ended; its records."""
        self.billed_images += finished.billed_images
        self.possible_extra_images += finished.possible_extra_images
        self.possible_extra_cost += finished.possible_extra_cost
        self.ambiguous_calls += finished.ambiguous_calls
        self.recovered_tasks += finished.recovered_tasks
        return finished.records
