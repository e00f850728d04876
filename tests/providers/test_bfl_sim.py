"""BflProvider against the BFL simulator over real HTTP: tasks, edits, limits, lost answers."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import logging
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
    ResultExpiredError,
    ThrottledError,
)
from qwbatch.core.model_table import ModelTable
from qwbatch.core.types import RenderRequest
from qwbatch.providers.bfl import BflProvider
from qwbatch.simulator import SimulatorHandle
from qwbatch.simulator.siblings import configure

pytestmark = pytest.mark.anyio
TABLE = ModelTable.load()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def bfl(bfl_sim: SimulatorHandle) -> AsyncIterator[BflProvider]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=0.5)) as client:
        yield BflProvider(
            client=client,
            base_url=bfl_sim.root_url,
            api_key=PROVIDER_KEY,
            table=TABLE,
            poll_interval_s=0.02,
            poll_max_interval_s=0.1,
            task_deadline_s=10.0,
        )


def req(
    model: str = "flux-2-pro",
    size: str | None = "1024*1024",
    prompt: str = "a red kite",
    **kw: object,
) -> RenderRequest:
    return RenderRequest(
        row_id="r1",
        row_number=0,
        request_key="k1",
        model=model,
        mode="edit" if kw.get("input_images") else "generate",
        prompt=prompt,
        size=size,
        seed=7,
        **kw,  # type: ignore[arg-type]
    )


def png_data_uri(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


async def test_generation_is_a_task_whose_cost_is_recorded_in_usd(
    bfl: BflProvider, bfl_sim: SimulatorHandle
) -> None:
    handle = await bfl.submit_task(req(size="2048*1024"))
    result = await bfl.wait_task(handle)
    data = await bfl.download(result.images[0].url)
    assert data.startswith(b"\x89PNG")
    assert result.cost == pytest.approx(0.045)  # 3 credits + 1.5 for the second MP
    assert result.task_id == handle.split("|")[0]
    assert bfl_sim.ledger()["billed_usd"] == pytest.approx(0.045)


async def test_edit_sends_numbered_inputs_and_pays_their_megapixels(
    bfl: BflProvider, bfl_sim: SimulatorHandle
) -> None:
    images = [png_data_uri(1024, 1024), png_data_uri(512, 512)]
    request = req(input_images=("a.png", "b.png"), input_sha256=("0" * 64, "1" * 64))
    result = await bfl.generate(request, images)
    # 3 credits for the output MP, 1.5 per input MP (1 + 0.25 MP).
    assert result.cost == pytest.approx(0.03 + 0.015 * 1.25)
    assert bfl_sim.ledger()["billed_usd"] == pytest.approx(result.cost)


async def test_moderated_tasks_are_not_charged(bfl: BflProvider, bfl_sim: SimulatorHandle) -> None:
    handle = await bfl.submit_task(req(prompt="MODERATE_CONTENT please"))
    with pytest.raises(ModerationError):
        await bfl.wait_task(handle)
    assert bfl_sim.ledger()["billed_usd"] == 0


async def test_active_task_limit_answers_429_until_a_task_ends(
    bfl: BflProvider, bfl_sim: SimulatorHandle
) -> None:
    handles = [await bfl.submit_task(req("flux-2-klein-4b", prompt=f"p{i}")) for i in range(24)]
    with pytest.raises(ThrottledError) as caught:
        await bfl.submit_task(req("flux-2-klein-4b", prompt="one too many"))
    assert caught.value.code == "ActiveTaskLimit"
    await bfl.wait_task(handles[0])  # one ends: room for one more
    await bfl.submit_task(req("flux-2-klein-4b", prompt="now it fits"))
    await asyncio.gather(*(bfl.wait_task(h) for h in handles[1:]))


async def test_out_of_credits_stops_every_later_call(
    bfl: BflProvider, bfl_sim: SimulatorHandle
) -> None:
    configure(bfl_sim.root_url, fail_next=[[402, "Insufficient credits"]])
    with pytest.raises(QuotaExhaustedError):
        await bfl.submit_task(req())
    calls = bfl_sim.ledger()["calls"]
    with pytest.raises(QuotaExhaustedError):
        await bfl.submit_task(req(prompt="another"))
    assert bfl_sim.ledger()["calls"] == calls  # nothing more was sent


async def test_a_lost_submit_answer_is_ambiguous_and_billed(
    bfl: BflProvider, bfl_sim: SimulatorHandle
) -> None:
    configure(bfl_sim.root_url, lose_answers=1, answer_delay_s=1.0)
    with pytest.raises(ProviderAmbiguousError):
        await bfl.submit_task(req())
    assert bfl_sim.ledger()["billed_images"] == 1  # possible spend, and here real spend
    listing = await bfl.list_tasks("flux-2-pro", 0, 1e10)
    assert not listing.complete  # no listing: nothing proves it absent


async def test_samples_expire_and_unknown_tasks_are_expired(
    bfl: BflProvider, bfl_sim: SimulatorHandle
) -> None:
    result = await bfl.wait_task(await bfl.submit_task(req()))
    await asyncio.sleep(2.1)  # the fixture's samples live 2 s (BFL: 10 min)
    with pytest.raises(ResultExpiredError):
        await bfl.download(result.images[0].url)
    with pytest.raises(ResultExpiredError):
        await bfl.wait_task(f"gone||{bfl_sim.root_url}/v1/get_result?id=gone")


async def test_validation_and_auth_errors_name_no_key(bfl_sim: SimulatorHandle) -> None:
    async with httpx.AsyncClient(timeout=5.0) as client:
        wrong = BflProvider(
            client=client, base_url=bfl_sim.root_url, api_key="bad-key-XYZ", table=TABLE
        )
        with pytest.raises(ProviderError) as caught:
            await wrong.submit_task(req())
        assert "bad-key-XYZ" not in str(caught.value)
        right = BflProvider(
            client=client, base_url=bfl_sim.root_url, api_key=PROVIDER_KEY, table=TABLE
        )
        with pytest.raises(ProviderError) as invalid:
            await right.submit_task(req(prompt=""))
        assert invalid.value.code == "ValidationError"
        assert "prompt" in invalid.value.message


async def test_the_key_never_goes_to_another_host(bfl: BflProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await bfl.wait_task("x||https://evil.example.com/v1/get_result?id=x")
    assert caught.value.code == "UnexpectedHost"


async def test_a_quote_off_the_price_table_is_logged(
    bfl_sim: SimulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    pro = TABLE.get("flux-2-pro")
    cheaper = dataclasses.replace(pro, pricing=dataclasses.replace(pro.pricing, first_mp=0.02))
    table = ModelTable({**{n: TABLE.get(n) for n in TABLE.names()}, "flux-2-pro": cheaper})
    async with httpx.AsyncClient(timeout=5.0) as client:
        provider = BflProvider(
            client=client, base_url=bfl_sim.root_url, api_key=PROVIDER_KEY, table=table
        )
        with caplog.at_level(logging.WARNING, logger="qwbatch.providers.bfl"):
            await provider.submit_task(req())
    assert "the model table's price is 0.02 USD" in caplog.text
    caplog.clear()
    async with httpx.AsyncClient(timeout=5.0) as client:
        exact = BflProvider(
            client=client, base_url=bfl_sim.root_url, api_key=PROVIDER_KEY, table=TABLE
        )
        with caplog.at_level(logging.WARNING, logger="qwbatch.providers.bfl"):
            await exact.submit_task(
                req(input_images=("a",), input_sha256=("0" * 64,)), [png_data_uri(512, 512)]
            )
    assert caplog.text == ""  # an edit's quote, with BFL's own input MP, matches
