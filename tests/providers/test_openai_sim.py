"""OpenAIProvider against the Images API simulator over real HTTP."""

from __future__ import annotations

import base64
import dataclasses
import io
from collections.abc import AsyncIterator

import httpx
import pytest
from fixtures_providers import PROVIDER_KEY
from PIL import Image

from qwbatch.core.errors import (
    ModerationError,
    ProviderAmbiguousError,
    ProviderError,
    QuotaExhaustedError,
    ThrottledError,
)
from qwbatch.core.model_table import ModelSpec, ModelTable, Pricing
from qwbatch.core.types import RenderRequest
from qwbatch.providers.openai import OpenAIProvider
from qwbatch.simulator import SimulatorHandle, running
from qwbatch.simulator.openai_app import create_openai_app
from qwbatch.simulator.siblings import configure

pytestmark = pytest.mark.anyio
TABLE = ModelTable.load()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def gpt(openai_sim: SimulatorHandle) -> AsyncIterator[OpenAIProvider]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=0.5)) as client:
        yield OpenAIProvider(
            client=client, base_url=f"{openai_sim.root_url}/v1", api_key=PROVIDER_KEY, table=TABLE
        )


def req(model: str = "gpt-image-2", prompt: str = "a blue heron", **kw: object) -> RenderRequest:
    fields: dict[str, object] = {"size": "1024*1024", **kw}
    return RenderRequest(
        row_id="r1",
        row_number=0,
        request_key="k1",
        model=model,
        mode="edit" if kw.get("input_images") else "generate",
        prompt=prompt,
        **fields,  # type: ignore[arg-type]
    )


def data_uri(kind: str = "png") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, format=kind.upper())
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode()


async def test_generation_bills_usage_tokens(
    gpt: OpenAIProvider, openai_sim: SimulatorHandle
) -> None:
    result = await gpt.generate(req(n=2, params=(("quality", "low"),)))
    assert len(result.images) == 2
    assert (await gpt.download(result.images[0].url)).startswith(b"\x89PNG")
    ledger = openai_sim.ledger()
    assert result.cost == pytest.approx(ledger["billed_usd"])
    # 2 × 272 output tokens at 30 USD per million, plus a few text tokens at 5.
    assert result.cost == pytest.approx(2 * 272 * 30e-6 + 3 * 5e-6)


async def test_edits_go_as_image_parts(gpt: OpenAIProvider, openai_sim: SimulatorHandle) -> None:
    inputs = [data_uri("png"), data_uri("jpeg"), data_uri("webp")]
    request = req(input_images=("a", "b", "c"), input_sha256=("0" * 64,) * 3)
    result = await gpt.generate(request, inputs)
    assert len(result.images) == 1
    assert result.cost == pytest.approx(openai_sim.ledger()["billed_usd"])
    assert result.cost > 1056 * 30e-6  # image tokens in are billed too


async def test_moderation_and_both_429s(gpt: OpenAIProvider, openai_sim: SimulatorHandle) -> None:
    with pytest.raises(ModerationError):
        await gpt.generate(req(prompt="MODERATE me"))
    configure(
        openai_sim.root_url,
        fail_next=[[429, "rate_limit_exceeded"], [429, "insufficient_quota"]],
    )
    with pytest.raises(ThrottledError) as throttled:
        await gpt.generate(req())
    assert throttled.value.retry_after == pytest.approx(0.05)
    with pytest.raises(QuotaExhaustedError):
        await gpt.generate(req())
    calls = openai_sim.ledger()["calls"]
    with pytest.raises(QuotaExhaustedError):
        await gpt.generate(req())  # stopped: never sent
    assert openai_sim.ledger()["calls"] == calls
    assert openai_sim.ledger()["billed_usd"] == 0


async def test_a_timeout_after_the_post_is_ambiguous(
    gpt: OpenAIProvider, openai_sim: SimulatorHandle
) -> None:
    configure(openai_sim.root_url, lose_answers=1, answer_delay_s=1.0)
    with pytest.raises(ProviderAmbiguousError):
        await gpt.generate(req())
    assert openai_sim.ledger()["billed_images"] == 1


async def test_dead_models_and_bad_keys(openai_sim: SimulatorHandle) -> None:
    async with httpx.AsyncClient(timeout=5.0) as client:
        wrong = OpenAIProvider(
            client=client, base_url=f"{openai_sim.root_url}/v1", api_key="sk-WRONG-1", table=TABLE
        )
        with pytest.raises(ProviderError) as caught:
            await wrong.generate(req())
        assert caught.value.code == "invalid_api_key"
        assert "sk-WRONG-1" not in str(caught.value)
        right = OpenAIProvider(
            client=client, base_url=f"{openai_sim.root_url}/v1", api_key=PROVIDER_KEY, table=TABLE
        )
        with pytest.raises(ProviderError) as dead:
            await right.generate(req("gpt-image-1"))
        assert dead.value.code == "model_not_found"


async def test_together_dialect_is_configuration() -> None:
    flux = ModelSpec(
        name="black-forest-labs/FLUX.1-schnell",
        provider="openai",
        size_rule="any",
        pricing_rule="image",
        pricing=Pricing(per_image={"any": 0.0027}),
    )
    table = ModelTable({**{n: TABLE.get(n) for n in TABLE.names()}, flux.name: flux})
    app = create_openai_app(api_key=PROVIDER_KEY, table=table, dialect="together")
    with running(app=app) as handle:
        async with httpx.AsyncClient(timeout=5.0) as client:
            gateway = OpenAIProvider(
                client=client,
                base_url=f"{handle.root_url}/v1",
                api_key=PROVIDER_KEY,
                table=table,
                dialect="together",
            )
            result = await gateway.generate(dataclasses.replace(req(), model=flux.name))
            assert result.cost is None  # no usage: the table's per-image price is the bill
            assert (await gateway.download(result.images[0].url)).startswith(b"\x89PNG")
            assert handle.ledger()["billed_usd"] == pytest.approx(0.0027)
