"""Image providers: the seam the engine calls, and the clients behind it.

::

    base.py               Provider, the protocol the engine and the budget know (TaskInfo,
                          TaskListing for async tasks)
    dashscope.py          DashScopeProvider: sync generation and editing, async tasks and
                          polling, on an ``httpx.AsyncClient`` handed in
    dashscope_errors.py   one table that classifies every DashScope answer into the error tree
    bfl.py                BflProvider: FLUX tasks (submit, poll the polling_url, harvest)
    openai.py             OpenAIProvider: GPT Image generations and multipart edits, and
                          gateways of the same path (the together dialect)
    registry.py           ProviderRouter: routes each call to its model's provider
    http_provider.py      HttpProvider, the clients' base: the client handed in (closed only
                          when made here), the base URL, the key kept out of messages
    http_calls.py         the send the clients share (httpx errors translated) and the HTTP
                          answers all providers give alike mapped onto the error tree
    polling.py            PollSchedule: a task polled, doubling to a cap, until a deadline
    aiohttp_transport.py  an httpx transport that sends through aiohttp (half the CPU a call)

What each client relies on about its API is in docs/providers/ (dashscope.md, bfl.md,
openai.md).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qwbatch.providers.base import Provider as Provider
    from qwbatch.providers.base import TaskInfo as TaskInfo
    from qwbatch.providers.base import TaskListing as TaskListing
    from qwbatch.providers.bfl import BflProvider as BflProvider
    from qwbatch.providers.dashscope import DashScopeProvider as DashScopeProvider
    from qwbatch.providers.openai import OpenAIProvider as OpenAIProvider
    from qwbatch.providers.registry import ProviderRouter as ProviderRouter

#: Each re-exported name → the module that defines it.
_HOME: dict[str, str] = {
    "Provider": "base",
    "TaskInfo": "base",
    "TaskListing": "base",
    "DashScopeProvider": "dashscope",
    "BflProvider": "bfl",
    "OpenAIProvider": "openai",
    "ProviderRouter": "registry",
}

__all__ = [
    "BflProvider",
    "DashScopeProvider",
    "OpenAIProvider",
    "Provider",
    "ProviderRouter",
    "TaskInfo",
    "TaskListing",
]


def __getattr__(name: str) -> object:
    """A re-exported name, its module imported on first use (PEP 562)."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
