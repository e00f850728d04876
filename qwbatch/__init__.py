"""qwbatch: batch image generation and editing with Qwen-Image, at scale, without paying twice.

The Python API (the CLI's commands, callable from a script or a notebook)::

    import qwbatch

    qwbatch.validate(df)                      # a path, an s3:// URI, or a pyarrow/pandas/
    qwbatch.estimate(df, "out").estimate      # polars table
    summary = qwbatch.run(df, "out", budget=5)
    catalog = qwbatch.read_catalog("out")     # a pyarrow Table

See :mod:`qwbatch.api`; exports to Hugging Face and WebDataset are in :mod:`qwbatch.export`.
The names are loaded on first use, so ``import qwbatch.core…`` stays light.

The run stage's package is ``qwbatch.runs`` (plural), so that ``qwbatch.run`` is only ever
this call: a subpackage named ``run`` would be bound over it whenever it is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from qwbatch.core.version import __version__

if TYPE_CHECKING:
    from qwbatch.api import (
        ManifestLike,
        Validation,
        estimate,
        read_catalog,
        run,
        validate,
    )

__all__ = [
    "ManifestLike",
    "Validation",
    "__version__",
    "estimate",
    "read_catalog",
    "run",
    "validate",
]

_API = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    # PEP 562: the API (and what it imports) loads when first asked for, not on every
    # ``import qwbatch.<package>`` (the simulator and planner helper processes).
    if name in _API:
        return getattr(importlib.import_module("qwbatch.api"), name)
    if name == "export":  # ``qwbatch.export.export(...)`` after a bare ``import qwbatch``
        return importlib.import_module("qwbatch.export")
    raise AttributeError(f"module 'qwbatch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
