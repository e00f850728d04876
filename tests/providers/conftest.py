"""Fixtures the DashScopeProvider test modules share: providers over a scripted
``httpx.MockTransport`` on a fake clock (the pieces are in ``dashscope_helpers``), on asyncio."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from dashscope_helpers import BASE, FakeTime, Make, Server
from support import KEY

from qwbatch.providers.dashscope import DashScopeProvider


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def make(fake_time: FakeTime) -> AsyncIterator[Make]:
    clients: list[httpx.AsyncClient] = []

    def build(
        server: Server, *, client_headers: dict[str, str] | None = None, **knobs: Any
    ) -> DashScopeProvider:
        client = httpx.AsyncClient(transport=httpx.MockTransport(server), headers=client_headers)
        clients.append(client)
        options: dict[str, Any] = {
            "poll_interval_s": 1.0,
            "poll_max_interval_s": 4.0,
            "task_deadline_s": 60.0,
            "sleep": fake_time.sleep,
            "clock": fake_time.clock,
            **knobs,
        }
        return DashScopeProvider(client=client, base_url=BASE + "/", api_key=KEY, **options)

    yield build
    for client in clients:
        await client.aclose()
