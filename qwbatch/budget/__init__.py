"""A run's budget, in the run's currency: refuse or trim the plan, then guard every paid call.

- :mod:`~qwbatch.budget.policy`: at plan time, refuse or trim the plan to the budget.
- :mod:`~qwbatch.budget.spend`: what the catalog says a run has already spent.
- :mod:`~qwbatch.budget.hold`, :mod:`~qwbatch.budget.guard`, :mod:`~qwbatch.budget.shared`:
  while running, the counter each paid call reserves from (in this process, or on Prefect).
- :mod:`~qwbatch.budget.provider`: the provider wrapper that reserves, then settles.
"""

from qwbatch.budget.guard import (
    BUDGETS,
    Backend,
    BudgetRegistry,
    BudgetSpec,
    LocalBudget,
    close_run_budget,
    open_run_budget,
    resolve_backend,
    shard_guard,
)
from qwbatch.budget.hold import BudgetGuard, Hold
from qwbatch.budget.policy import (
    BUDGET_MODES,
    BudgetMode,
    BudgetOutcome,
    BudgetPolicy,
    apply,
    rank,
    skipped_records,
)
from qwbatch.budget.provider import BudgetedProvider
from qwbatch.budget.spend import spent_by_run, spent_in_part

__all__ = [
    "BUDGETS",
    "BUDGET_MODES",
    "Backend",
    "BudgetGuard",
    "BudgetMode",
    "BudgetOutcome",
    "BudgetPolicy",
    "BudgetRegistry",
    "BudgetSpec",
    "BudgetedProvider",
    "Hold",
    "LocalBudget",
    "apply",
    "close_run_budget",
    "open_run_budget",
    "rank",
    "resolve_backend",
    "shard_guard",
    "skipped_records",
    "spent_by_run",
    "spent_in_part",
]
