"""Image providers: the seam the engine calls, and the DashScope client behind it.

::

    base.py               Provider, the protocol the engine and the budget know (TaskInfo,
                          TaskListing for async tasks)
    dashscope.py          DashScopeProvider: sync generation and editing, async tasks and
                          polling, on an ``httpx.AsyncClient`` handed in
    dashscope_errors.py   one table that classifies every DashScope answer into the error tree
    aiohttp_transport.py  an httpx transport that sends through aiohttp (half the CPU a call)

What the client relies on about the API is in docs/providers/dashscope.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qwbatch.providers.base import Provider as Provider
    from qwbatch.providers.base import TaskInfo as TaskInfo
    from qwbatch.providers.base import TaskListing as TaskListing
    from qwbatch.providers.dashscope import DashScopeProvider as DashScopeProvider

#: Each re-exported name → the module that defines it.
_HOME: dict[str, str] = {
    "Provider": "base",
    "TaskInfo": "base",
    "TaskListing": "base",
    "DashScopeProvider": "dashscope",
}

__all__ = [
    "DashScopeProvider",
    "Provider",
    "TaskInfo",
    "TaskListing",
]


def __getattr__(name: str) -> object:
    """A re-exported name, its module imported on first use (PEP 562)."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
