"""Build a run's parts from settings and run its steps: what a flow task or the CLI calls.

Each function takes plain values (URIs, ids, settings) so that a Prefect task on any worker
can call it; clients are built here, once per call, from :class:`~qwbatch.core.settings.Settings`.

A run is three steps, each safe to repeat: :func:`prepare` (choose the run to continue, or
plan a new one), :func:`render_shard` per shard (skips finished shards, replays the journal
of unfinished ones), and :func:`finish` (the summary).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pyarrow.parquet as pq

from qwbatch import budget as budgets
from qwbatch.catalog import spend as catalog_spend
from qwbatch.core.costs import MONEY_PLACES, PriceTable
from qwbatch.core.errors import ObjectNotFoundError, StorageError, StorageTransientError
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.core.stop import STOP, StopSignal
from qwbatch.core.types import CatalogRecord
from qwbatch.inputs.staging import InputStage, StagedInputs
from qwbatch.plan import Plan, decode_shard, new_run_id, plan_run
from qwbatch.render import shard_loop
from qwbatch.render.breaker import breaker_for, forget
from qwbatch.render.engine import Engine, ShardResult, run_shard, store_retries
from qwbatch.render.journal import StoreJournal
from qwbatch.render.shard_results import read_shard_result, write_shard_result
from qwbatch.runs import learned_limits, progress
from qwbatch.runs import records as runs
from qwbatch.runs.summary import RunSummary
from qwbatch.storage import layout
from qwbatch.storage.stores import ObjectStore, open_store

log = logging.getLogger(__name__)
T = TypeVar("T")


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
    """Validate, dedup and shard ``manifest`` into ``out`` (see ``plan.planner.plan_run``).

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
    _tell_tracker(planned, settings)
    return planned


def _tell_tracker(plan: Plan, settings: Settings) -> None:
    """Hand the plan to the run's progress tracker, when this process has one."""
    tracker = progress.tracker_for(plan.run_id)
    if tracker is not None:
        tracker.on_plan(
            plan,
            estimated_cost=float(plan.estimate.total) if plan.estimate else 0.0,
            currency=plan.estimate.currency if plan.estimate else settings.currency(),
        )


def _part_records(store: ObjectStore, key: str) -> list[CatalogRecord]:
    """A catalog part's rows as records (what a progress tracker counts); [] if it is gone."""
    try:
        rows = pq.read_table(io.BytesIO(store.get(key))).to_pylist()
    except ObjectNotFoundError:
        return []
    names = {f.name for f in fields(CatalogRecord)}
    records = []
    for row in rows:
        for name in ("started_at", "finished_at"):
            if row.get(name) is not None:
                row[name] = row[name].timestamp()
        row["tags"] = dict(row.get("tags") or [])
        records.append(CatalogRecord(**{k: v for k, v in row.items() if k in names}))
    return records


def estimate(
    manifest: str,
    out: str | None,
    *,
    settings: Settings,
    strict: bool = False,
    budget: budgets.BudgetPolicy | None = None,
) -> Plan:
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
            budget=budget,
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


@dataclass(frozen=True, slots=True)
class Prepared:
    """The plan a run works from, and whether it continues an earlier attempt."""

    plan: Plan
    resumed: bool


def prepare(
    manifest: str,
    out: str,
    *,
    settings: Settings,
    run_id: str | None = None,
    resume: str | None = None,
    auto_resume: bool = True,
    strict: bool = False,
    budget: budgets.BudgetPolicy | None = None,
) -> Prepared:
    """Continue an unfinished run of ``manifest`` in ``out``, or plan a new one.

    See :func:`qwbatch.runs.records.choose_run` for which run; a run whose planning was cut short is
    planned again under its own id (planning writes every file at a fixed name). A resumed
    run keeps its plan and its budget, less what its earlier attempts spent or may have.
    """
    store = open_store(out, settings)
    fingerprint = _fingerprint(manifest, settings, strict, budget)
    chosen, loaded = runs.choose_run(
        store, fingerprint, run_id=run_id, resume=resume, auto_resume=auto_resume
    )
    if loaded is not None or chosen is not None:
        # Each attempt of a run probes the provider afresh (render.breaker).
        forget(loaded.run_id if loaded is not None else chosen or "")
    if loaded is not None:
        if loaded.budget is not None:
            prices = PriceTable.load(settings, model_table(settings))
            spent = runs.spent_so_far(store, loaded.run_id, prices)
            loaded.budget = dataclasses.replace(loaded.budget, spent=spent)
        _tell_tracker(loaded, settings)
        return Prepared(loaded, resumed=runs.has_started(store, loaded.run_id))
    # A chosen run without a plan was cut short while planning: plan it again, same id.
    resumed = chosen is not None and runs.run_exists(store, chosen, fingerprint)
    new_id = chosen or new_run_id()
    made = plan(manifest, out, settings=settings, run_id=new_id, strict=strict, budget=budget)
    # Recorded once planning succeeded (a refused plan leaves nothing behind); nothing was
    # sent before this point, so a crash during planning only costs planning again.
    runs.start_run(store, new_id, fingerprint)
    runs.save_plan(store, made, fingerprint)
    return Prepared(made, resumed=resumed)


def resolve_run_id(
    manifest: str,
    out: str,
    *,
    settings: Settings,
    run_id: str | None = None,
    resume: str | None = None,
    auto_resume: bool = True,
    strict: bool = False,
    budget: budgets.BudgetPolicy | None = None,
) -> str:
    """The run id :func:`prepare` will work under, known before it runs (for progress
    displays): the one given, else an unfinished run of ``manifest`` in ``out``, else new."""
    if resume or run_id:
        return resume or run_id or ""
    if auto_resume:
        store = open_store(out, settings)
        found = runs.find_unfinished(store, _fingerprint(manifest, settings, strict, budget))
        if found is not None:
            return found
    return new_run_id()


def _fingerprint(
    manifest: str, settings: Settings, strict: bool, budget: budgets.BudgetPolicy | None
) -> str:
    """What makes two invocations the same run: manifest bytes and the options that change
    its plan (a new budget is a new run, which dedups what the old one rendered)."""
    options = f"{budget.amount}:{budget.mode}" if budget is not None else ""
    if settings.default_target_size is not None:  # another size: other keys, another run
        options += f":target={settings.default_target_size}"
    return runs.manifest_fingerprint(
        manifest,
        default_model=settings.default_model,
        strict=strict,
        options=options,
        settings=settings,
    )


async def render_shard_async(
    shard_key: str,
    *,
    out: str,
    run_id: str,
    manifest_dir: str,
    settings: Settings,
    store: ObjectStore | None = None,
    budget: budgets.BudgetSpec | None = None,
    stop: StopSignal = STOP,
) -> ShardResult:
    """Render one shard file of run ``run_id`` into ``out``, spending within ``budget``.

    Edit inputs come from the stage the plan wrote (``out/inputs/``); ``manifest_dir`` is
    not read. A shard that finished before (its result file, see
    :mod:`qwbatch.render.shard_results`, says nothing was left) is not run again; an unfinished one
    replays its journal first. Once the shard has finished with nothing left, its result is
    saved and its journal deleted.
    """
    del manifest_dir  # kept in the signature: flows and deployments pass it
    store = store or open_store(out, settings)
    label = layout.shard_label(shard_key)
    tracker = progress.tracker_for(run_id)
    done = await _with_store(settings, read_shard_result, store, shard_key)
    if done is not None and done.left == 0:
        if tracker is not None and done.part_uri:
            # Finished by an earlier attempt: its rows still count towards this one's progress.
            part = layout.catalog_key(done.part_uri.rsplit("/", 1)[-1])
            tracker.on_records(await _with_store(settings, _part_records, store, part))
        return done
    if stop.is_set():
        data = await _with_store(settings, store.get, shard_key)
        return ShardResult(shard_key=shard_key, left=sum(1 for _ in decode_shard(data)))
    journal = await _with_store(
        settings, StoreJournal.open, store, run_id, label, retry_s=settings.store_retry_s
    )
    guard_scope = (
        budgets.shard_guard(budget) if budget is not None else contextlib.nullcontext(None)
    )
    table = model_table(settings)
    # Start near the limits earlier runs learned (once per process), keep what this one did.
    await _with_store(settings, learned_limits.load, store, settings, table)
    # Imported here: the providers bring aiohttp (~0.1 s), which planning, estimates and dry
    # runs never use.
    from qwbatch.providers.registry import ProviderRouter

    router = ProviderRouter.from_settings(settings, table)
    async with router as provider, guard_scope as guard:
        engine = Engine(
            provider=provider,
            store=store,
            table=table,
            settings=settings,
            run_id=run_id,
            input_loader=StagedInputs(store),
            on_records=tracker.on_records if tracker is not None else None,
            budget=guard,
            journal=journal,
            stop=stop,
            breaker=breaker_for(run_id),
        )
        result = await run_shard(engine, shard_key)
    await _with_store(settings, learned_limits.save, store, settings)
    if result.left == 0:
        await _with_store(settings, write_shard_result, store, result)
        await _with_store(settings, journal.discard)
    return result


def render_shard(
    shard_key: str,
    *,
    out: str,
    run_id: str,
    manifest_dir: str,
    settings: Settings,
    budget: budgets.BudgetSpec | None = None,
) -> ShardResult:
    """Synchronous wrapper: the shard runs on the process's one shard loop (see
    :mod:`qwbatch.render.shard_loop`), whichever Prefect task thread calls it."""
    return shard_loop.run(
        render_shard_async(
            shard_key,
            out=out,
            run_id=run_id,
            manifest_dir=manifest_dir,
            settings=settings,
            budget=budget,
        )
    )


def finish(
    prepared: Prepared,
    shards: list[ShardResult],
    *,
    out: str,
    settings: Settings,
    began: float,
    stop: StopSignal = STOP,
    save: bool = True,
) -> RunSummary:
    """The run's summary, also written to ``runs/<run>/summary.json`` unless ``save`` is
    False (the flow adds its contact sheet first, then calls :func:`save_summary`)."""
    store = open_store(out, settings)
    summary = RunSummary.from_parts(
        prepared.plan,
        shards,
        out=out,
        catalog_uri=store.uri(layout.CATALOG_PREFIX.rstrip("/")),
        currency=settings.currency(),
        wall_s=time.monotonic() - began,
    )
    summary.resumed = prepared.resumed
    note_lifetime_spend(store, summary)
    summary.stopped_by = stop.reason if stop.is_set() and summary.left else None
    if save:
        save_summary(store, summary)
    return summary


def note_lifetime_spend(store: ObjectStore, summary: RunSummary) -> None:
    """Set ``summary``'s lifetime spend from the catalog; a catalog that cannot be read
    leaves it unknown (the run still stands)."""
    try:
        found = catalog_spend.spend(store, summary.run_id)
    except (StorageError, StorageTransientError) as exc:
        log.warning("lifetime spend unknown for %s: %s", summary.out, exc.message)
        return
    summary.lifetime_cost = round(found.lifetime_cost.get(summary.currency, 0.0), MONEY_PLACES)
    summary.lifetime_runs = found.runs


def save_summary(store: ObjectStore, summary: RunSummary) -> None:
    """Write ``runs/<run>/summary.json``: a run with nothing ``left`` is finished."""
    key = layout.summary_key(summary.run_id)
    store.put(key, summary.to_json().encode(), content_type="application/json")


async def _with_store(settings: Settings, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a thread, retried while the store is unreachable."""
    async for attempt in store_retries(settings):
        with attempt:
            return await asyncio.to_thread(fn, *args, **kwargs)
    raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover
