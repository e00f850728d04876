"""A run's budget, in the run's currency: refuse or trim the plan, then guard every paid call.

::

    policy.py    at plan time: refuse the plan, or trim it to the budget (BudgetPolicy, apply)
    spend.py     what the catalog says a run id has already spent
    hold.py      Hold and the BudgetGuard protocol both counters implement
    guard.py     while running: the run's counter, in this process or on Prefect (BudgetSpec)
    shared.py    the counter on the Prefect server (a global concurrency limit)
    provider.py  BudgetedProvider: reserve before each paid call, settle on what was billed

Names are imported from their module on first use, so importing one module stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qwbatch.budget.guard import BUDGETS as BUDGETS
    from qwbatch.budget.guard import Backend as Backend
    from qwbatch.budget.guard import BudgetRegistry as BudgetRegistry
    from qwbatch.budget.guard import BudgetSpec as BudgetSpec
    from qwbatch.budget.guard import LocalBudget as LocalBudget
    from qwbatch.budget.guard import close_run_budget as close_run_budget
    from qwbatch.budget.guard import open_run_budget as open_run_budget
    from qwbatch.budget.guard import resolve_backend as resolve_backend
    from qwbatch.budget.guard import shard_guard as shard_guard
    from qwbatch.budget.hold import BudgetGuard as BudgetGuard
    from qwbatch.budget.hold import Hold as Hold
    from qwbatch.budget.policy import BUDGET_MODES as BUDGET_MODES
    from qwbatch.budget.policy import BudgetMode as BudgetMode
    from qwbatch.budget.policy import BudgetOutcome as BudgetOutcome
    from qwbatch.budget.policy import BudgetPolicy as BudgetPolicy
    from qwbatch.budget.policy import apply as apply
    from qwbatch.budget.policy import rank as rank
    from qwbatch.budget.policy import skipped_records as skipped_records
    from qwbatch.budget.provider import BudgetedProvider as BudgetedProvider
    from qwbatch.budget.spend import spent_by_run as spent_by_run
    from qwbatch.budget.spend import spent_in_part as spent_in_part

#: Each re-exported name → the module that defines it.
_HOME: dict[str, str] = {
    "BUDGETS": "guard",
    "Backend": "guard",
    "BudgetRegistry": "guard",
    "BudgetSpec": "guard",
    "LocalBudget": "guard",
    "close_run_budget": "guard",
    "open_run_budget": "guard",
    "resolve_backend": "guard",
    "shard_guard": "guard",
    "BudgetGuard": "hold",
    "Hold": "hold",
    "BUDGET_MODES": "policy",
    "BudgetMode": "policy",
    "BudgetOutcome": "policy",
    "BudgetPolicy": "policy",
    "apply": "policy",
    "rank": "policy",
    "skipped_records": "policy",
    "BudgetedProvider": "provider",
    "spent_by_run": "spend",
    "spent_in_part": "spend",
}

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


def __getattr__(name: str) -> object:
    """A re-exported name, its module imported on first use (PEP 562)."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
