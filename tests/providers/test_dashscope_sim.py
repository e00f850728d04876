"""DashScopeProvider against the real thing we have: the simulator, over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from support import KEY

from qwbatch.core.errors import ModerationError, ProviderError, ResultExpiredError
from qwbatch.core.types import RenderRequest
from qwbatch.providers.aiohttp_transport import AiohttpTransport
from qwbatch.providers.dashscope import DashScopeProvider
from qwbatch.simulator import SimulatorConfig, SimulatorHandle, running

pytestmark = pytest.mark.anyio

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    config = SimulatorConfig(api_key=KEY, fast=True, rate_limit=False, url_ttl_s=2.0)
    with running(config) as handle:
        yield handle


@pytest.fixture(params=["direct", "aiohttp", "httpcore"])
async def provider(
    sim: SimulatorHandle, request: pytest.FixtureRequest
) -> AsyncIterator[DashScopeProvider]:
    """Calls straight to aiohttp (as runs make them), through httpx onto aiohttp, or httpx's
    own transport."""
    transport = AiohttpTransport() if request.param != "httpcore" else None
    async with httpx.AsyncClient(timeout=30.0, transport=transport) as client:
        yield DashScopeProvider(
            client=client,
            base_url=sim.base_url,
            api_key=KEY,
            poll_interval_s=0.05,
            poll_max_interval_s=0.2,
            task_deadline_s=30.0,
            direct=transport if request.param == "direct" else None,
        )


def req(model: str, size: str | None, *, n: int = 1, prompt: str = "a lighthouse") -> RenderRequest:
    return RenderRequest(
        row_id="r1",
        row_number=0,
        request_key="k1",
        model=model,
        mode="generate",
        prompt=prompt,
        size=size,
        n=n,
        seed=7,
    )


async def test_sync_generate_and_download(provider: DashScopeProvider) -> None:
    result = await provider.generate(req("qwen-image-2.0", "1024*768", n=2))
    assert len(result.images) == 2
    assert result.billed_images == 2
    assert (result.width, result.height) == (1024, 768)
    assert result.request_id
    for image in result.images:
        assert (await provider.download(image.url)).startswith(PNG_MAGIC)


async def test_async_submit_wait_and_download(provider: DashScopeProvider) -> None:
    task_id = await provider.submit_task(req("qwen-image-plus", "1664*928"))
    result = await provider.wait_task(task_id)
    assert result.task_id == task_id
    assert len(result.images) == 1
    assert result.billed_images == 1
    assert (await provider.download(result.images[0].url)).startswith(PNG_MAGIC)


async def test_moderation_is_its_own_error(provider: DashScopeProvider) -> None:
    with pytest.raises(ModerationError) as caught:
        await provider.generate(req("qwen-image-2.0", None, prompt="a __moderate__ scene"))
    assert caught.value.code == "DataInspectionFailed"


async def test_a_wrong_key_is_refused_and_not_echoed(sim: SimulatorHandle) -> None:
    async with httpx.AsyncClient(timeout=30.0) as client:
        provider = DashScopeProvider(client=client, base_url=sim.base_url, api_key="sk-wrong-1")
        with pytest.raises(ProviderError) as caught:
            await provider.generate(req("qwen-image-2.0", None))
    assert caught.value.status_code == 401
    assert "sk-wrong-1" not in str(caught.value)


async def test_an_expired_result_url(provider: DashScopeProvider) -> None:
    result = await provider.generate(req("qwen-image-2.0", "1024*1024"))
    await asyncio.sleep(2.2)  # past the simulator's url_ttl_s
    with pytest.raises(ResultExpiredError):
        await provider.download(result.images[0].url)
