"""What tests share that is not a server: the test key, settings aimed at the simulator, and
request builders. The one home for each; import it by bare name (``from support import KEY``).

- :data:`KEY` is the one DashScope API key tests use. The session simulator
  (``fixtures_simulator``) accepts it, so a test need not configure one; leak checks look for
  it in logs, artifacts and stored objects. (The FLUX and GPT Image simulators have their own,
  ``fixtures_providers.PROVIDER_KEY``.)
- :func:`engine_settings` is :class:`Settings` aimed at the DashScope simulator at test speed.
  What a test needs beyond that (another rps, a budget backend, a longer backoff) it passes as
  keyword arguments, so the difference stands in the test.
- :func:`dashscope_provider` is a provider for the simulator, for tests below the engine.
- :func:`make_request` and :func:`simple_request` build generate requests with their real
  request key.

Servers and the environment pointed at them are fixtures (``fixtures_*.py``); rendering helpers
are ``render_helpers`` (the engine on a few requests) and ``local_run`` (a whole manifest).
"""

from __future__ import annotations

from typing import Any

import httpx

from qwbatch.core.keys import RequestFields, request_key
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.core.types import RenderRequest
from qwbatch.providers.dashscope import DashScopeProvider
from qwbatch.simulator import SimulatorHandle

KEY = "sk-test-key-0123456789abcdef-SECRET"
TABLE = ModelTable.load()

#: Test speed: backoff of 10-20 ms, polls every 20-50 ms, and no client-side throttling to
#: speak of (the simulator allows 1000 requests per second).
TEST_SPEED: dict[str, Any] = {
    "backoff_base_s": 0.01,
    "backoff_max_s": 0.02,
    "poll_interval_s": 0.02,
    "poll_max_interval_s": 0.05,
    "rps": 500,
    "max_in_flight": 16,
}


def engine_settings(sim: SimulatorHandle, **changes: Any) -> Settings:
    """Settings for the DashScope simulator ``sim`` with :data:`KEY`, at :data:`TEST_SPEED`;
    ``changes`` override any field (``engine_settings(sim, rps=400, shard_size=100)``)."""
    values = {
        "dashscope_base_url": sim.base_url,
        "dashscope_api_key": KEY,
        **TEST_SPEED,
        **changes,
    }
    return Settings(**values)


def dashscope_provider(
    sim: SimulatorHandle, cls: type[DashScopeProvider] = DashScopeProvider, **options: Any
) -> DashScopeProvider:
    """A ``cls`` provider for the simulator ``sim`` with :data:`KEY`, polling every 20-50 ms, on
    its own client (closed with the provider: ``async with dashscope_provider(sim) as p``)."""
    return cls(
        client=httpx.AsyncClient(timeout=10),
        base_url=sim.base_url,
        api_key=KEY,
        poll_interval_s=0.02,
        poll_max_interval_s=0.05,
        **options,
    )


def make_request(
    row_id: str,
    prompt: str,
    *,
    n: int = 1,
    size: str | None = "512*512",
    seed: int = 1,
    model: str = "qwen-image-2.0",
    tags: tuple[tuple[str, str], ...] = (),
    row_number: int = 0,
    priority: int | None = None,
) -> RenderRequest:
    """A generate request for ``prompt`` as row ``row_id``, keyed as the planner keys it."""
    key = request_key(
        RequestFields(model=model, mode="generate", prompt=prompt, size=size, n=n, seed=seed)
    )
    return RenderRequest(
        row_id=row_id,
        row_number=row_number,
        request_key=key,
        model=model,
        mode="generate",
        prompt=prompt,
        size=size,
        n=n,
        seed=seed,
        tags=tags,
        priority=priority,
    )


def simple_request(
    prompt: str = "a red bicycle",
    *,
    model: str = "qwen-image-2.0",
    n: int = 1,
    size: str | None = "512*512",
    seed: int = 1,
    row_id: str = "r1",
) -> RenderRequest:
    """A generate request with the prompt first, for tests that vary one field."""
    return make_request(row_id, prompt, model=model, n=n, size=size, seed=seed)
