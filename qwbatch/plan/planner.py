"""Planning a run: what to render, what already exists, and how to cut it into shards.

:func:`plan_run` is the one way in; it chooses how to plan. It streams the manifest batch by
batch: it drops requests whose outputs the catalog already holds (recording them as
``deduplicated``), folds rows that ask for the same request onto one key (they are rendered
once and all recorded), prices what is left (``plan.estimate``) and refuses or trims it to
a budget (``qwbatch.budget.policy``, rows left out are recorded as ``skipped_budget``), then
writes the rejects beside the catalog and the remaining work as shard files under
``runs/<run_id>/shards/`` (``qwbatch.plan.shards``). ``dry_run`` does all of it but the
writing: ``qwbatch estimate`` is a plan that writes nothing and calls no provider.

The paths, all giving the same plan for the same manifest:

- with a budget, in memory (``qwbatch.plan.memory``): a budget ranks the whole plan before
  cutting it;
- without one, streaming in one process (``qwbatch.plan.stream``), in memory that does not
  grow with the manifest;
- or, from ``Settings.plan_split_rows`` rows when set (off by default), streaming in two
  processes (``qwbatch.plan.split``).
"""

from __future__ import annotations

from pathlib import Path

from qwbatch.budget.policy import BudgetPolicy
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.manifest import InputResolver, gc_paused
from qwbatch.plan import split
from qwbatch.plan.memory import plan_in_memory
from qwbatch.plan.model import Plan
from qwbatch.plan.stream import PLAN_BATCH_ROWS, plan_in_one, planning_pool
from qwbatch.storage.stores import ObjectStore


def plan_run(
    manifest: str | Path,
    store: ObjectStore | None,
    *,
    settings: Settings,
    table: ModelTable,
    run_id: str,
    strict: bool = False,
    shard_size: int | None = None,
    budget: BudgetPolicy | None = None,
    dry_run: bool = False,
    resolve_input: InputResolver | None = None,
) -> Plan:
    """Read, validate, dedup, price and shard ``manifest``; write rejects, dedup rows, shards.

    ``store`` None (only with ``dry_run``) plans against an empty catalog. ``budget`` raises
    ``BudgetExceededError`` (mode refuse) before anything is written, or trims (mode trim).
    ``resolve_input`` resolves edit inputs (``qwbatch.inputs.staging.InputStage`` in a run); the
    default only hashes local files (see ``qwbatch.manifest.read_manifest``). ``shard_size``
    (requests per shard) defaults to ``settings.shard_size``.
    """
    if store is None and not dry_run:
        raise ValueError("plan_run writes to a store unless dry_run")
    if budget is not None:
        return plan_in_memory(
            manifest,
            store,
            settings=settings,
            table=table,
            run_id=run_id,
            budget=budget,
            strict=strict,
            shard_size=shard_size,
            dry_run=dry_run,
            resolve_input=resolve_input,
        )
    return stream_plan(
        manifest,
        store,
        settings=settings,
        table=table,
        run_id=run_id,
        strict=strict,
        shard_size=shard_size,
        dry_run=dry_run,
        resolve_input=resolve_input,
    )


def stream_plan(
    manifest: str | Path,
    store: ObjectStore | None,
    *,
    settings: Settings,
    table: ModelTable,
    run_id: str,
    strict: bool = False,
    shard_size: int | None = None,
    dry_run: bool = False,
    resolve_input: InputResolver | None = None,
    batch_size: int = PLAN_BATCH_ROWS,
) -> Plan:
    """Plan ``manifest`` as ``plan_run`` does without a budget, ``batch_size`` rows at a time:
    in two processes from ``settings.plan_split_rows`` rows (``split.split_row``), else in
    this one. The cyclic garbage collector is paused: the plan's objects form no cycles,
    and its full collections would walk every key kept."""
    with gc_paused(), planning_pool():
        plan = Plan(run_id=run_id)
        size = shard_size or settings.shard_size
        start = split.split_row(manifest, store, settings, batch_size)
        if start is not None:
            return split.plan_in_two(
                manifest,
                start,
                plan,
                store=store,
                dry_run=dry_run,
                settings=settings,
                table=table,
                size=size,
                strict=strict,
                batch_size=batch_size,
                resolve_input=resolve_input,
            )
        return plan_in_one(
            manifest,
            plan,
            store=store,
            dry_run=dry_run,
            settings=settings,
            table=table,
            size=size,
            strict=strict,
            batch_size=batch_size,
            resolve_input=resolve_input,
        )
