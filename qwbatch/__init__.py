"""qwbatch: batch image generation and editing with Qwen-Image, at scale, without paying twice.

The Python API (the CLI's commands, callable from a script or a notebook)::

    import qwbatch

    qwbatch.validate(df)                      # a path, an s3:// URI, or a pyarrow/pandas/
    qwbatch.estimate(df, "out").estimate      # polars table
    summary = qwbatch.run(df, "out", budget=5)
    catalog = qwbatch.read_catalog("out")     # a pyarrow Table

See :mod:`qwbatch.api`; exports to Hugging Face and WebDataset are in :mod:`qwbatch.export`.
The names are loaded on first use, so ``import qwbatch.core…`` stays light.

``qwbatch.run`` is also the name of the run stage's package (``qwbatch/run/``), which Python
binds to this package's ``run`` attribute whenever it is imported. So that both hold, that
package is made callable here: calling it is :func:`qwbatch.api.run`.
"""

from __future__ import annotations

import importlib
import types
from typing import TYPE_CHECKING, Any

import qwbatch.run as _run_stage
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

_API = frozenset(__all__) - {"__version__", "run"}


class _CallableStage(types.ModuleType):
    """The ``qwbatch.run`` package, callable as :func:`qwbatch.api.run`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return importlib.import_module("qwbatch.api").run(*args, **kwargs)


_run_stage.__class__ = _CallableStage


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
