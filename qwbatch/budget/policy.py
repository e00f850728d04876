"""A run's budget at plan time: refuse or trim the plan before anything is sent.

With the price of every request known (``n`` images at the model's unit price,
:mod:`qwbatch.core.costs`), :func:`apply` works in the run's currency: ``refuse`` raises
:class:`BudgetExceededError` when the plan costs more than the budget, before a shard is
written or a call is made; ``trim`` ranks the requests (higher ``priority`` first, then
manifest order; rows without a priority after every row with one), keeps the longest prefix of
that ranking that fits, and records every other row as ``skipped_budget``. The prefix stops at
the first request that does not fit, so "everything after row X was skipped" is the whole
story; cheaper rows later in the ranking are not squeezed in. Spend already recorded in the
catalog under the same run id (:mod:`qwbatch.budget.spend`) counts against the budget, so a
rerun of one run id cannot spend it twice.

While the run renders, :mod:`qwbatch.budget.guard` and :mod:`qwbatch.budget.provider` hold
the rest of the line: no paid call passes the budget.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from qwbatch.core.costs import ZERO, Estimate, PriceTable, estimate, format_money
from qwbatch.core.errors import BudgetExceededError, ConfigError
from qwbatch.core.types import CatalogRecord, PlanItem, RenderRequest

BudgetMode = Literal["refuse", "trim"]
BUDGET_MODES: tuple[BudgetMode, ...] = ("refuse", "trim")


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
