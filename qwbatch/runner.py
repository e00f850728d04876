"""Build a run's parts from settings and run its steps: what a flow task or the CLI calls.

Each function takes plain values (URIs, ids, settings) so that a Prefect task on any worker
can call it; clients are built here, once per call, from :class:`~qwbatch.config.Settings`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from qwbatch import progress
from qwbatch.config import Settings
from qwbatch.engine import Engine, ShardResult, run_shard
from qwbatch.inputs import LocalInputs
from qwbatch.plan import Plan, plan_run
from qwbatch.providers.dashscope import DashScopeProvider
from qwbatch.registry import ModelTable
from qwbatch.storage import ObjectStore, open_store


def model_table(settings: Settings) -> ModelTable:
    return ModelTable.load(settings.models_file, settings.declared_models)


def plan(manifest: str, out: str, *, settings: Settings, run_id: str, strict: bool = False) -> Plan:
    """Validate, dedup and shard ``manifest`` into ``out`` (see :func:`qwbatch.plan.plan_run`)."""
    store = open_store(out, settings)
    table = model_table(settings)
    planned = plan_run(
        manifest,
        store,
        settings=settings,
        table=table,
        run_id=run_id,
        strict=strict,
    )
    tracker = progress.tracker_for(run_id)
    if tracker is not None:
        tracker.on_plan(
            planned,
            estimated_cost=estimate_cost(planned, table, settings),
            currency=settings.currency(),
        )
    return planned


def estimate_cost(plan: Plan, table: ModelTable, settings: Settings) -> float:
    """What the plan's images cost at list price, in the region's currency (0 when unpriced)."""
    return sum(
        n * (table.get(model).price(settings.region) or 0.0)
        for model, n in plan.images_by_model.items()
    )


async def render_shard_async(
    shard_key: str,
    *,
    out: str,
    run_id: str,
    manifest_dir: str,
    settings: Settings,
    store: ObjectStore | None = None,
) -> ShardResult:
    """Render one shard file of run ``run_id`` into ``out``."""
    store = store or open_store(out, settings)
    tracker = progress.tracker_for(run_id)
    async with DashScopeProvider.from_settings(settings) as provider:
        engine = Engine(
            provider=provider,
            store=store,
            table=model_table(settings),
            settings=settings,
            run_id=run_id,
            input_loader=LocalInputs(Path(manifest_dir)),
            on_records=tracker.on_records if tracker is not None else None,
        )
        return await run_shard(engine, shard_key)


def render_shard(
    shard_key: str, *, out: str, run_id: str, manifest_dir: str, settings: Settings
) -> ShardResult:
    """Synchronous wrapper: one event loop per shard (each Prefect task thread has its own)."""
    return asyncio.run(
        render_shard_async(
            shard_key, out=out, run_id=run_id, manifest_dir=manifest_dir, settings=settings
        )
    )
