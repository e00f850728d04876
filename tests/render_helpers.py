"""Render a few requests through the real engine (simulator over HTTP, a local store), and
write their catalog part: the ground that views (contact sheets, HTML reports) are tested on."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from qwbatch.catalog import table as catalog
from qwbatch.core.keys import request_key
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.core.types import CatalogRecord, PlanItem, RenderRequest
from qwbatch.providers.dashscope import DashScopeProvider
from qwbatch.render.engine import Engine, RecordsCallback
from qwbatch.storage.stores import ObjectStore, open_store

KEY = "sk-views-test-key-0123456789abcdef"
TABLE = ModelTable.load()


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
) -> RenderRequest:
    key = request_key(
        model=model,
        mode="generate",
        prompt=prompt,
        negative_prompt=None,
        size=size,
        n=n,
        seed=seed,
        prompt_extend=None,
        watermark=False,
        input_sha256=(),
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


def engine_settings(sim) -> Settings:
    sim.configure(api_key=KEY)
    return Settings(
        dashscope_base_url=sim.base_url,
        dashscope_api_key=KEY,
        backoff_base_s=0.01,
        backoff_max_s=0.02,
        poll_interval_s=0.02,
        poll_max_interval_s=0.05,
        rps=500,
        max_in_flight=16,
    )


def render(
    items: Sequence[PlanItem],
    settings: Settings,
    out: Path | str,
    *,
    run_id: str = "20260101T000000Z-test",
    on_records: RecordsCallback | None = None,
    store: ObjectStore | None = None,
    write_part: bool = True,
) -> list[CatalogRecord]:
    """Render ``items`` into ``out`` and (by default) write their catalog part."""
    store = store or open_store(str(out), settings)

    async def go() -> list[CatalogRecord]:
        async with DashScopeProvider.from_settings(settings) as provider:
            engine = Engine(
                provider=provider,
                store=store,
                table=TABLE,
                settings=settings,
                run_id=run_id,
                on_records=on_records,
            )
            return await engine.run_items(list(items))

    records = asyncio.run(go())
    if write_part:
        catalog.write_part(store, records, run_id=run_id, label="test")
    return records
