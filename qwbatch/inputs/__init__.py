"""Edit inputs: where an input's bytes come from, their checks, staging and lineage.

::

    fetch.py     the sources an input URI may name (files, S3, HTTPS, earlier outputs,
                 ``catalog:<row id>``) and each one's rules
    http.py      HTTPS fetching that only reaches public addresses (or allowed hosts)
    staging.py   InputStage: fetch and check at plan time, stage under DEST, send from there
    lineage.py   edits of earlier outputs, and the walk back through them

See docs/editing.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qwbatch.inputs.lineage import trace as trace
    from qwbatch.inputs.staging import InputStage as InputStage
    from qwbatch.inputs.staging import StagedInputs as StagedInputs

#: Each re-exported name → the module that defines it.
_HOME: dict[str, str] = {
    "trace": "lineage",
    "InputStage": "staging",
    "StagedInputs": "staging",
}

__all__ = [
    "InputStage",
    "StagedInputs",
    "trace",
]


def __getattr__(name: str) -> object:
    """A re-exported name, its module imported on first use (PEP 562)."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
