"""Build a run's parts from settings and run its steps: what a flow task or the CLI calls.

Each function takes plain values (URIs, ids, settings) so that a Prefect task on any worker
can call it; clients are built here, once per call, from :class:`~qwbatch.config.Settings`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from decimal import Decimal
from pathlib import Path

from qwbatch import budget as budgets
from qwbatch import progress
from qwbatch.config import Settings
from qwbatch.engine import Engine, ShardResult, run_shard
from qwbatch.plan import Plan, plan_run
from qwbatch.providers.dashscope import DashScopeProvider
from qwbatch.registry import ModelTable
from qwbatch.staging import InputStage, StagedInputs
from qwbatch.storage import ObjectStore, open_store

log = logging.getLogger(__name__)


def model_table(settings: Settings) -> ModelTable:
    return ModelTable.load(settings.models_file, settings.declared_models)


def input_stage(
    manifest: str, settings: Settings, store: ObjectStore | None, *, stage: bool = True
) -> InputStage:
    """The edit-input pipeline for ``manifest``: files under its folder (and the input
    roots), s3://, https://, and ``store``'s outputs and catalog; staged into ``store``
    unless ``stage`` is False (checks only, as ``qwbatch validate`` does)."""
    return InputStage.from_settings(
        settings, manifest_dir=Path(manifest).parent, store=store, stage=stage
    )


def plan(
    manifest: str,
    out: str,
    *,
    settings: Settings,
    run_id: str,
    strict: bool = False,
    budget: budgets.BudgetPolicy | None = None,
) -> Plan:
    """Validate, dedup and shard ``manifest`` into ``out`` (see :func:`qwbatch.plan.plan_run`).

    Edit inputs are fetched, checked and staged under ``out/inputs/`` here, once each.
    """
    store = open_store(out, settings)
    with input_stage(manifest, settings, store) as stage:
        planned = plan_run(
            manifest,
            store,
            settings=settings,
            table=model_table(settings),
            run_id=run_id,
            strict=strict,
            budget=budget,
            resolve_input=stage,
        )
    stats = stage.stats
    if stats.fetched or stats.refused:
        log.info(
            "run %s inputs: %d fetched, %d distinct images (%d changed to send), %d staged, "
            "%d already staged, %d refused",
            run_id,
            stats.fetched,
            stats.contents,
            stats.changed,
            stats.staged,
            stats.reused,
            stats.refused,
        )
    tracker = progress.tracker_for(run_id)
    if tracker is not None:
        tracker.on_plan(
            planned,
            estimated_cost=float(planned.estimate.total) if planned.estimate else 0.0,
            currency=planned.estimate.currency if planned.estimate else settings.currency(),
        )
    return planned


def estimate(manifest: str, out: str | None, *, settings: Settings, strict: bool = False) -> Plan:
    """Plan ``manifest`` as a run into ``out`` would, writing nothing and calling no provider.

    The plan's ``estimate`` is the price; without ``out`` nothing counts as rendered already.
    Edit inputs are fetched and checked as a run would (so keys agree) but not staged.
    """
    store = open_store(out, settings) if out else None
    with input_stage(manifest, settings, store, stage=False) as stage:
        return plan_run(
            manifest,
            store,
            settings=settings,
            table=model_table(settings),
            run_id="estimate",
            strict=strict,
            dry_run=True,
            resolve_input=stage,
        )


def open_budget(plan: Plan, settings: Settings) -> budgets.BudgetSpec | None:
    """Create the counter that guards ``plan``'s run while it renders; None without a budget."""
    if plan.budget is None:
        return None
    currency = plan.estimate.currency if plan.estimate else settings.currency()
    spec = budgets.BudgetSpec(
        run_id=plan.run_id,
        limit=str(plan.budget.remaining),
        currency=currency,
        backend=budgets.resolve_backend(settings),
    )
    asyncio.run(budgets.open_run_budget(spec))
    return spec


def close_budget(spec: budgets.BudgetSpec) -> Decimal:
    """Remove the run's counter; the money it held at the end."""
    return asyncio.run(budgets.close_run_budget(spec))


async def render_shard_async(
    shard_key: str,
    *,
    out: str,
    run_id: str,
    manifest_dir: str,
    settings: Settings,
    store: ObjectStore | None = None,
    budget: budgets.BudgetSpec | None = None,
) -> ShardResult:
    """Render one shard file of run ``run_id`` into ``out``, spending within ``budget``.

    Edit inputs come from the stage the plan wrote (``out/inputs/``); ``manifest_dir`` is
    not read.
    """
    del manifest_dir  # kept in the signature: flows and deployments pass it
    store = store or open_store(out, settings)
    guard_scope = (
        budgets.shard_guard(budget) if budget is not None else contextlib.nullcontext(None)
    )
    tracker = progress.tracker_for(run_id)
    async with DashScopeProvider.from_settings(settings) as provider, guard_scope as guard:
        engine = Engine(
            provider=provider,
            store=store,
            table=model_table(settings),
            settings=settings,
            run_id=run_id,
            input_loader=StagedInputs(store),
            on_records=tracker.on_records if tracker is not None else None,
            budget=guard,
        )
        return await run_shard(engine, shard_key)


def render_shard(
    shard_key: str,
    *,
    out: str,
    run_id: str,
    manifest_dir: str,
    settings: Settings,
    budget: budgets.BudgetSpec | None = None,
) -> ShardResult:
    """Synchronous wrapper: one event loop per shard (each Prefect task thread has its own)."""
    return asyncio.run(
        render_shard_async(
            shard_key,
            out=out,
            run_id=run_id,
            manifest_dir=manifest_dir,
            settings=settings,
            budget=budget,
        )
    )
