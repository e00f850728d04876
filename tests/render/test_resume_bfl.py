"""Kill and resume with FLUX tasks (no listing, no idempotency): BFL is paid once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from fixtures_providers import PROVIDER_KEY
from support import TABLE, make_request

from qwbatch.core.settings import Settings
from qwbatch.core.types import CatalogRecord, PlanItem, RenderRequest
from qwbatch.providers.bfl import BflProvider
from qwbatch.providers.registry import ProviderRouter
from qwbatch.render.engine import Engine
from qwbatch.render.journal import StoreJournal
from qwbatch.simulator import SimulatorHandle
from qwbatch.storage.stores import LocalStore

RUN = "run-bfl-resume"
SHARD = "shard-00000"


@pytest.fixture
def settings(bfl_sim: SimulatorHandle) -> Settings:
    return Settings(
        bfl_base_url=bfl_sim.root_url,
        bfl_api_key=PROVIDER_KEY,
        backoff_base_s=0.01,
        backoff_max_s=0.02,
        poll_interval_s=0.02,
        poll_max_interval_s=0.05,
    )


def flux(prompt: str) -> RenderRequest:
    return make_request(f"row-{prompt}", prompt, model="flux-2-pro", size="1024*1024")


def resume(request: RenderRequest, settings: Settings, out: Path) -> list[CatalogRecord]:
    """A fresh process: the shard's journal replayed, then the engine on it."""
    store = LocalStore(out)

    async def go() -> list[CatalogRecord]:
        journal = StoreJournal.open(store, RUN, SHARD)
        async with ProviderRouter.from_settings(settings, TABLE) as provider:
            engine = Engine(
                provider=provider,
                store=store,
                table=TABLE,
                settings=settings,
                run_id=RUN,
                journal=journal,
            )
            return await engine.run_items([PlanItem(request)])

    return asyncio.run(go())


def crash(
    out: Path, settings: Settings, script: Callable[[StoreJournal, BflProvider], Awaitable[None]]
) -> None:
    """What the killed process did before it died."""
    store = LocalStore(out)

    async def go() -> None:
        journal = StoreJournal(store, RUN, SHARD)
        async with BflProvider.from_settings(settings, TABLE) as provider:
            await script(journal, provider)
        await journal.close()

    asyncio.run(go())


def test_a_journaled_task_is_polled_again_and_paid_once(
    bfl_sim: SimulatorHandle, settings: Settings, tmp_path: Path
) -> None:
    request = flux("a harbour crane")

    async def killed_while_polling(journal: StoreJournal, provider: BflProvider) -> None:
        await journal.intent(request, "async", 1)
        await journal.task(request, await provider.submit_task(request))

    crash(tmp_path, settings, killed_while_polling)
    (record,) = resume(request, settings, tmp_path)
    assert record.status == "succeeded"
    assert record.cost == pytest.approx(0.03)
    ledger = bfl_sim.ledger()
    assert ledger["billed_images"] == 1
    assert ledger["billed_usd"] == pytest.approx(record.cost)


def test_an_expired_sample_is_recorded_not_paid_again(
    bfl_sim: SimulatorHandle, settings: Settings, tmp_path: Path
) -> None:
    request = flux("a lantern festival")

    async def killed_before_download(journal: StoreJournal, provider: BflProvider) -> None:
        await journal.intent(request, "async", 1)
        handle = await provider.submit_task(request)
        await journal.task(request, handle)
        journal.answer(request, await provider.wait_task(handle))

    crash(tmp_path, settings, killed_before_download)
    time.sleep(2.1)  # the fixture's samples live 2 s (BFL's: 10 minutes)
    (record,) = resume(request, settings, tmp_path)
    assert record.status == "expired"
    assert bfl_sim.ledger()["billed_images"] == 1


def test_a_lost_submit_is_possible_spend_never_silently_resent(
    bfl_sim: SimulatorHandle, settings: Settings, tmp_path: Path
) -> None:
    request = flux("a paper boat")

    async def killed_on_the_wire(journal: StoreJournal, provider: BflProvider) -> None:
        await journal.intent(request, "async", 1)  # sent; the answer never journaled
        await provider.submit_task(request)

    crash(tmp_path, settings, killed_on_the_wire)
    strict = Settings(**{**settings.model_dump(), "ambiguous_retries": 0})
    (record,) = resume(request, strict, tmp_path)
    assert record.status == "ambiguous"
    assert record.possible_cost == pytest.approx(0.03)
    assert bfl_sim.ledger()["billed_images"] == 1  # BFL has no listing: not found, not re-sent
