"""A run's budget: refuse or trim the plan before anything is sent, then guard every paid call.

Two lines of defence, both in the run's currency:

**At plan time** (:func:`apply`), with the price of every request known (``n`` images at the
model's unit price, :mod:`qwbatch.core.costs`): ``refuse`` raises :class:`BudgetExceededError`
when the plan costs more than the budget, before a shard is written or a call is made;
``trim`` ranks the requests (higher ``priority`` first, then manifest order; rows without a
priority after every row with one), keeps the longest prefix of that ranking that fits, and
records every other row as ``skipped_budget``. The prefix stops at the first request that
does not fit, so "everything after row X was skipped" is the whole story; cheaper rows later
in the ranking are not squeezed in. Spend already recorded in the catalog under the same run
id counts against the budget (a rerun of one run id cannot spend it twice).

**While running** (:class:`BudgetedProvider` around the provider), a guard holds the budget:
before each provider call it *reserves* the most the call can bill (``n`` × unit price) and
refuses the call, as ``skipped_budget``, when the reservation does not fit beside what is
spent and held; after the call it *settles* on what the provider actually billed (its usage
count, so an ``n>1`` call with failed items pays for its successes only). A call whose
outcome is unknown (``AmbiguousError``, a cancelled call, an async task that never answered)
keeps its whole reservation: it may have been billed, so its money is treated as gone. Hence
billed spend never passes the budget, whatever the retries, as long as the provider bills at
most ``n`` images per call. A refused reservation does not wait for others to settle: under
a plan already trimmed or checked to fit, it happens only after an ambiguous call used up
money, and then refusing is the truthful answer.

Where the guard's counter lives (:class:`BudgetSpec`, ``Settings.budget_backend``):

- ``local``: a :class:`LocalBudget` in this process (:data:`BUDGETS`, by run id), exact and
  free, shared by every shard this process runs, which is every shard of a ``qwbatch run``
  (the flow runs its shard tasks in a thread pool). A shard that runs in another process
  finds no counter and refuses to spend rather than start a second budget.
- ``prefect``: a Prefect global concurrency limit used as a counter
  (:mod:`qwbatch.budget.shared`), shared by every worker that reaches the same server.
  Costs two API calls per provider call.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, Protocol

import pyarrow.compute as pc

from qwbatch.catalog.table import catalog_columns
from qwbatch.core.costs import MONEY_PLACES, ZERO, Estimate, PriceTable, estimate, format_money
from qwbatch.core.errors import (
    AmbiguousError,
    BudgetExceededError,
    ConfigError,
    QwBatchError,
    ResultExpiredError,
    TaskDeadlineError,
)
from qwbatch.core.settings import Settings
from qwbatch.core.types import CatalogRecord, PlanItem, ProviderResult, RenderRequest
from qwbatch.providers.base import Provider
from qwbatch.storage.stores import ObjectStore

BudgetMode = Literal["refuse", "trim"]
BUDGET_MODES: tuple[BudgetMode, ...] = ("refuse", "trim")
Backend = Literal["local", "prefect"]


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """A run's budget: ``amount`` in the run's currency, and what to do when the plan is over.

    ``spent`` is what the catalog already records under this run id.
    """

    amount: Decimal
    mode: BudgetMode = "refuse"
    spent: Decimal = ZERO

    @property
    def remaining(self) -> Decimal:
        return max(self.amount - self.spent, ZERO)


@dataclass(slots=True)
class BudgetOutcome:
    """The plan after its budget: what is sent, what is skipped, and what the whole would cost."""

    kept: list[PlanItem]
    skipped: list[PlanItem]
    wanted: Estimate
    remaining: Decimal


def rank(first: RenderRequest, other: RenderRequest) -> RenderRequest:
    """``first`` carrying the higher priority of two rows folded onto one request."""
    if other.priority is None or (first.priority is not None and first.priority >= other.priority):
        return first
    return dataclasses.replace(first, priority=other.priority)


def _ranking_key(item: PlanItem) -> tuple[int, int, int]:
    priority = item.request.priority
    return (
        (0, -priority, item.request.row_number)
        if priority is not None
        else (1, 0, item.request.row_number)
    )


def apply(items: Sequence[PlanItem], prices: PriceTable, policy: BudgetPolicy) -> BudgetOutcome:
    """Refuse (raise) or trim ``items`` to ``policy``; the module docstring has the rules."""
    wanted = estimate((item.request for item in items), prices)
    currency = prices.currency
    if wanted.unpriced:
        models = ", ".join(f"{m} ({n} images)" for m, n in sorted(wanted.unpriced.items()))
        raise ConfigError(
            f"a budget needs a price for every model, and none is known in region "
            f"{prices.region!r} for: {models}. Set QWBATCH_PRICES or QWBATCH_PRICES_FILE"
        )
    remaining = policy.remaining
    if wanted.total <= remaining:
        return BudgetOutcome(list(items), [], wanted, remaining)
    if policy.mode == "refuse":
        by_model = ", ".join(
            f"{model} {line.images} images {format_money(line.cost, currency)}"
            for model, line in sorted(wanted.by_model.items())
        )
        spent = (
            f" ({format_money(policy.spent, currency)} of it already spent by this run id)"
            if policy.spent
            else ""
        )
        raise BudgetExceededError(
            f"refused: the plan costs {format_money(wanted.total, currency)} for "
            f"{wanted.images} images ({by_model}), over the budget of "
            f"{format_money(policy.amount, currency)}{spent}. Nothing was sent. Raise "
            "--budget, or use --budget-mode trim to render in order up to the budget"
        )
    kept: list[PlanItem] = []
    skipped: list[PlanItem] = []
    total = ZERO
    for item in sorted(items, key=_ranking_key):
        cost = prices.request_cost(item.request)
        if not skipped and total + cost <= remaining:
            kept.append(item)
            total += cost
        else:
            skipped.append(item)
    return BudgetOutcome(kept, skipped, wanted, remaining)


def skipped_records(
    items: Iterable[PlanItem], prices: PriceTable, *, run_id: str, budget: Decimal
) -> list[CatalogRecord]:
    """Catalog rows (one per manifest row, duplicates included) for requests a trim skipped."""
    now = time.time()
    records = []
    for item in items:
        request = item.request
        message = (
            f"not rendered: {request.n} image(s) at "
            f"{format_money(prices.request_cost(request), prices.currency)} did not fit in the "
            f"budget of {format_money(budget, prices.currency)} after the rows ranked before it"
        )
        rows = [(request.row_id, request.tags)] + [(a.row_id, a.tags) for a in item.aliases]
        for row_id, tags in rows:
            records.append(
                CatalogRecord.for_request(
                    request,
                    run_id=run_id,
                    row_id=row_id,
                    status="skipped_budget",
                    tags=tags,
                    error_code=BudgetExceededError.code,
                    error_message=message,
                    unit_price=prices.catalog_price(request.model),
                    currency=prices.currency,
                    cost=0.0,
                    started_at=now,
                    finished_at=now,
                )
            )
    return records


def spent_by_run(store: ObjectStore, run_id: str) -> Decimal:
    """What the catalog records as billed under ``run_id`` (cost plus possible cost)."""
    rows = catalog_columns(store, ("run_id", "cost", "possible_cost"), run_id=run_id)
    total = ZERO
    for column in ("cost", "possible_cost"):
        total += Decimal(str(pc.sum(rows[column]).as_py() or 0.0))
    return round(total, MONEY_PLACES)


# --------------------------------------------------------------------------- the running guard


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
    from qwbatch.budget.shared import server_configured

    return "prefect" if server_configured() else "local"


async def open_run_budget(spec: BudgetSpec) -> None:
    """Create the run's counter, holding ``spec.limit`` (the flow does this before shards)."""
    if spec.backend == "local":
        BUDGETS.open(spec.run_id, spec.limit_amount)
        return
    from qwbatch.budget.shared import create_counter

    await create_counter(spec.counter_name, spec.limit_amount)


async def close_run_budget(spec: BudgetSpec) -> Decimal:
    """Remove the run's counter; the money it held at the end (spent or possibly spent)."""
    if spec.backend == "local":
        budget = BUDGETS.close(spec.run_id)
        return budget.used + budget.held if budget is not None else ZERO
    from qwbatch.budget.shared import delete_counter, read_counter

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
    from qwbatch.budget.shared import PrefectBudget

    async with PrefectBudget(spec.counter_name) as guard:
        yield guard


# --------------------------------------------------------------------------- the provider seam


def _may_have_billed(exc: BaseException) -> bool:
    """Whether a failed call may still have been billed (then its hold is kept)."""
    if isinstance(exc, AmbiguousError):
        return True
    # Our other errors say the provider did not bill; anything else (cancellation, a bug)
    # leaves the outcome unknown.
    return not isinstance(exc, QwBatchError)


class BudgetedProvider:
    """A :class:`~qwbatch.providers.base.Provider` that spends only what the guard allows.

    Wraps the real provider: ``generate`` and ``submit_task`` reserve ``n`` × unit price
    first and raise :class:`BudgetExceededError` (recorded as ``skipped_budget``) when it
    does not fit; ``generate`` and ``wait_task`` settle on the usage the provider reports.
    A task this provider did not submit (harvested on resume) is settled by whoever
    reserved it. Everything else is passed through.
    """

    def __init__(self, provider: Provider, guard: BudgetGuard, prices: PriceTable) -> None:
        self._provider = provider
        self._guard = guard
        self._prices = prices
        #: Task id → (hold, request) for submitted tasks whose billing is still unknown.
        self._tasks: dict[str, tuple[Hold, RenderRequest]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._provider, name)

    async def _reserve(self, request: RenderRequest) -> Hold:
        amount = self._prices.request_cost(request)
        hold = await self._guard.reserve(amount)
        if hold is None:
            raise BudgetExceededError(
                f"not sent: {request.n} image(s) of {request.model} "
                f"({format_money(amount, self._prices.currency)}) would pass the run's budget"
            )
        return hold

    async def generate(self, request: RenderRequest, images: Sequence[str] = ()) -> ProviderResult:
        hold = await self._reserve(request)
        try:
            result = await self._provider.generate(request, images)
        except BaseException as exc:
            await self._guard.settle(hold, hold.amount if _may_have_billed(exc) else ZERO)
            raise
        billed = self._prices.billed_cost(request, result.billed_images, result.cost)
        await self._guard.settle(hold, billed)
        return result

    async def submit_task(self, request: RenderRequest, images: Sequence[str] = ()) -> str:
        hold = await self._reserve(request)
        try:
            submit = self._provider.submit_task
            task_id = await (submit(request, images) if images else submit(request))
        except BaseException as exc:
            await self._guard.settle(hold, hold.amount if _may_have_billed(exc) else ZERO)
            raise
        self._tasks[task_id] = (hold, request)
        return task_id

    async def wait_task(self, task_id: str) -> ProviderResult:
        try:
            result = await self._provider.wait_task(task_id)
        except QwBatchError as exc:
            # Polling retries its own failures, so an error means the task ended without
            # images (FAILED, CANCELED: nothing billed), unless the task may yet bill: it
            # outlived the deadline, its id expired, or the answer was lost. Then the hold stays.
            if not isinstance(exc, TaskDeadlineError | ResultExpiredError | AmbiguousError):
                pending = self._tasks.pop(task_id, None)
                if pending is not None:
                    await self._guard.settle(pending[0], ZERO)
            raise
        pending = self._tasks.pop(task_id, None)
        if pending is not None:
            hold, request = pending
            billed = self._prices.billed_cost(request, result.billed_images, result.cost)
            await self._guard.settle(hold, billed)
        return result

    async def download(self, url: str) -> bytes:
        return await self._provider.download(url)
