"""One engine, three providers behind the registry: catalog costs equal what each billed."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from fixtures_providers import PROVIDER_KEY
from support import TABLE, engine_settings, make_request

from qwbatch.core.settings import Settings
from qwbatch.core.types import CatalogRecord, PlanItem
from qwbatch.providers.registry import ProviderRouter
from qwbatch.render.engine import Engine
from qwbatch.simulator import SimulatorHandle
from qwbatch.storage.stores import open_store


def _render(items: list[PlanItem], settings, out: Path) -> list[CatalogRecord]:  # type: ignore[no-untyped-def]
    store = open_store(str(out), settings)

    async def go() -> list[CatalogRecord]:
        async with ProviderRouter.from_settings(settings, TABLE) as provider:
            engine = Engine(
                provider=provider, store=store, table=TABLE, settings=settings, run_id="mixed"
            )
            return await engine.run_items(items)

    return asyncio.run(go())


def test_a_mixed_shard_bills_each_provider_once(
    sim: SimulatorHandle, bfl_sim: SimulatorHandle, openai_sim: SimulatorHandle, tmp_path: Path
) -> None:
    settings = Settings(
        **{
            **engine_settings(sim).model_dump(),
            "bfl_base_url": bfl_sim.root_url,
            "bfl_api_key": PROVIDER_KEY,
            "openai_base_url": f"{openai_sim.root_url}/v1",
            "openai_api_key": PROVIDER_KEY,
        }
    )
    qwen = make_request("q", "a lighthouse at dusk", model="qwen-image-2.0")
    flux = make_request("f", "a lighthouse at dusk", model="flux-2-pro", size="1024*1024")
    gpt = dataclasses.replace(
        make_request("g", "a lighthouse at dusk", model="gpt-image-2", size="1024*1024"),
        params=(("quality", "low"),),
    )
    records = _render([PlanItem(qwen), PlanItem(flux), PlanItem(gpt)], settings, tmp_path)
    by_model = {record.model: record for record in records}
    assert {r.status for r in records} == {"succeeded"}
    assert by_model["flux-2-pro"].cost == pytest.approx(bfl_sim.ledger()["billed_usd"])
    assert by_model["flux-2-pro"].cost == pytest.approx(0.03)
    assert by_model["gpt-image-2"].cost == pytest.approx(openai_sim.ledger()["billed_usd"])
    assert by_model["qwen-image-2.0"].cost == pytest.approx(0.035)
    assert sim.ledger()["billed_images"] == 1
    # Running the same shard again pays nobody twice: the outputs are in the store.
    again = _render([PlanItem(qwen), PlanItem(flux), PlanItem(gpt)], settings, tmp_path)
    assert {r.status for r in again} == {"deduplicated"}
    assert bfl_sim.ledger()["billed_images"] == 1
    assert openai_sim.ledger()["billed_images"] == 1


def test_a_provider_without_a_key_fails_its_rows_only(sim: SimulatorHandle, tmp_path: Path) -> None:
    settings = engine_settings(sim)
    qwen = make_request("q", "a quiet harbour", model="qwen-image-2.0")
    flux = make_request("f", "a quiet harbour", model="flux-2-pro", size="1024*1024")
    records = _render([PlanItem(qwen), PlanItem(flux)], settings, tmp_path)
    by_model = {record.model: record for record in records}
    assert by_model["qwen-image-2.0"].status == "succeeded"
    assert by_model["flux-2-pro"].status == "failed"
    assert "BFL_API_KEY" in (by_model["flux-2-pro"].error_message or "")
