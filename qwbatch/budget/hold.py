"""What a running guard hands out and takes back: a :class:`Hold` on the run's money.

Both counters (:class:`~qwbatch.budget.guard.LocalBudget` in this process,
:class:`~qwbatch.budget.shared.PrefectBudget` on the Prefect server) implement
:class:`BudgetGuard`, and :class:`~qwbatch.budget.provider.BudgetedProvider` spends through it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol


@dataclass(slots=True)
class Hold:
    """Money reserved for one provider call; ``units`` is the counter's own measure of it."""

    amount: Decimal
    units: int = 0
    taken_at: float = field(default_factory=time.monotonic)


class BudgetGuard(Protocol):
    """A counter of the run's money: spent or possibly spent, plus reserved."""

    async def reserve(self, amount: Decimal) -> Hold | None:
        """Hold ``amount`` for one call; None when it does not fit in the budget."""
        ...

    async def settle(self, hold: Hold, spent: Decimal) -> None:
        """The call ended: ``spent`` of it stays counted for good, the rest is freed."""
        ...
