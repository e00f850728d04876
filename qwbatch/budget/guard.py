"""A run's budget while it runs: the counter every paid call reserves from and settles to.

Before each provider call, :class:`~qwbatch.budget.provider.BudgetedProvider` *reserves* the
most the call can bill (``n`` × unit price) from the run's guard and refuses the call, as
``skipped_budget``, when the reservation does not fit beside what is spent and held; after the
call it *settles* on what the provider actually billed. A refused reservation does not wait
for others to settle: under a plan already trimmed or checked to fit, it happens only after an
ambiguous call used up money, and then refusing is the truthful answer.

Where the counter lives (:class:`BudgetSpec`, ``Settings.budget_backend``):

- ``local``: a :class:`LocalBudget` in this process (:data:`BUDGETS`, by run id), exact and
  free, shared by every shard this process runs, which is every shard of a ``qwbatch run``
  (the flow runs its shard tasks in a thread pool). A shard that runs in another process
  finds no counter and refuses to spend rather than start a second budget.
- ``prefect``: a Prefect global concurrency limit used as a counter
  (:mod:`qwbatch.budget.shared`), shared by every worker that reaches the same server.
  Costs two API calls per provider call.
"""

from __future__ import annotations

import re
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from qwbatch.budget.hold import BudgetGuard, Hold
from qwbatch.budget.shared import (
    PrefectBudget,
    create_counter,
    delete_counter,
    read_counter,
    server_configured,
)
from qwbatch.core.costs import ZERO
from qwbatch.core.errors import BudgetExceededError
from qwbatch.core.settings import Settings

Backend = Literal["local", "prefect"]


class LocalBudget:
    """A budget counter for the shards of this process; thread-safe, never blocks."""

    def __init__(self, limit: Decimal) -> None:
        self.limit = limit
        #: Money billed, or possibly billed, by settled calls.
        self.used = ZERO
        #: Money reserved by calls still in flight.
        self.held = ZERO
        self._lock = threading.Lock()

    async def reserve(self, amount: Decimal) -> Hold | None:
        with self._lock:
            if self.used + self.held + amount > self.limit:
                return None
            self.held += amount
        return Hold(amount)

    async def settle(self, hold: Hold, spent: Decimal) -> None:
        with self._lock:
            self.held -= hold.amount
            self.used += spent

    def __repr__(self) -> str:
        return f"LocalBudget(limit={self.limit}, used={self.used}, held={self.held})"


class BudgetRegistry:
    """Run id → the :class:`LocalBudget` its flow opened in this process."""

    def __init__(self) -> None:
        self._budgets: dict[str, LocalBudget] = {}
        self._lock = threading.Lock()

    def open(self, run_id: str, limit: Decimal) -> LocalBudget:
        with self._lock:
            budget = self._budgets[run_id] = LocalBudget(limit)
            return budget

    def get(self, run_id: str) -> LocalBudget:
        with self._lock:
            budget = self._budgets.get(run_id)
        if budget is None:
            raise BudgetExceededError(
                f"run {run_id}'s budget is counted in the process that started the run, "
                "not here; refusing to spend. Run shards on other workers with "
                "QWBATCH_BUDGET_BACKEND=prefect"
            )
        return budget

    def close(self, run_id: str) -> LocalBudget | None:
        with self._lock:
            return self._budgets.pop(run_id, None)


#: The process-wide registry the flow and its shard tasks share.
BUDGETS = BudgetRegistry()


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    """A run's running budget as shard tasks receive it: plain values any worker can use.

    ``limit`` is the money left for this run (``Decimal`` text), in ``currency``.
    """

    run_id: str
    limit: str
    currency: str
    backend: Backend = "local"

    @property
    def counter_name(self) -> str:
        """The Prefect global concurrency limit that counts this run's money."""
        return "qwbatch-budget-" + re.sub(r"[^A-Za-z0-9_.-]", "-", self.run_id)

    @property
    def limit_amount(self) -> Decimal:
        return Decimal(self.limit)


def resolve_backend(settings: Settings) -> Backend:
    """``Settings.budget_backend``, with "auto" decided: "prefect" when a server is set."""
    if settings.budget_backend != "auto":
        return settings.budget_backend
    return "prefect" if server_configured() else "local"


async def open_run_budget(spec: BudgetSpec) -> None:
    """Create the run's counter, holding ``spec.limit`` (the flow does this before shards)."""
    if spec.backend == "local":
        BUDGETS.open(spec.run_id, spec.limit_amount)
        return
    await create_counter(spec.counter_name, spec.limit_amount)


async def close_run_budget(spec: BudgetSpec) -> Decimal:
    """Remove the run's counter; the money it held at the end (spent or possibly spent)."""
    if spec.backend == "local":
        budget = BUDGETS.close(spec.run_id)
        return budget.used + budget.held if budget is not None else ZERO
    try:
        used = await read_counter(spec.counter_name)
    finally:
        await delete_counter(spec.counter_name)
    return used


@asynccontextmanager
async def shard_guard(spec: BudgetSpec) -> AsyncIterator[BudgetGuard]:
    """The guard a shard spends through: the process's counter, or the server's."""
    if spec.backend == "local":
        yield BUDGETS.get(spec.run_id)
        return
    async with PrefectBudget(spec.counter_name) as guard:
        yield guard
