"""A run from start to end: what the CLI and the flows call.

::

    options.py           RunOptions: a run's options, one object from the API's and the
                         flow's keyword parameters down
    runner.py            builds a run's parts from settings and runs its steps: prepare
                         (plan), render shards, finish; resolve_run_id, estimate
    records.py           a run's records in its store, and which run a rerun resumes
    summary.py           RunSummary: what the plan found and what the shards did
    progress.py          a thread-safe tally fed by the engine's records
    progress_display.py  that tally live on a terminal, or as log lines elsewhere
    compaction.py        the catalog's small parts merged into a few
    rerender.py          a manifest with new seeds for the rows a review rejected
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qwbatch.runs.compaction import compact as compact
    from qwbatch.runs.progress import GOOD_STATUSES as GOOD_STATUSES
    from qwbatch.runs.progress_display import watch_run as watch_run
    from qwbatch.runs.runner import estimate as estimate
    from qwbatch.runs.runner import input_stage as input_stage
    from qwbatch.runs.runner import model_table as model_table
    from qwbatch.runs.runner import resolve_run_id as resolve_run_id
    from qwbatch.runs.summary import RunSummary as RunSummary

#: Each re-exported name → the module that defines it.
_HOME: dict[str, str] = {
    "compact": "compaction",
    "GOOD_STATUSES": "progress",
    "watch_run": "progress_display",
    "estimate": "runner",
    "input_stage": "runner",
    "model_table": "runner",
    "resolve_run_id": "runner",
    "RunSummary": "summary",
}

__all__ = [
    "GOOD_STATUSES",
    "RunSummary",
    "compact",
    "estimate",
    "input_stage",
    "model_table",
    "resolve_run_id",
    "watch_run",
]


def __getattr__(name: str) -> object:
    """A re-exported name, its module imported on first use (PEP 562)."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
