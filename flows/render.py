"""``render-manifest``: manifest → plan → one Prefect task per shard → catalog → summary.

With a ``budget`` the plan refuses (or trims) what would pass it before anything is sent,
and every shard spends through the run's budget counter. Each run publishes Prefect
artifacts (``flows.artifacts``): progress as shards finish, then cost by model and tag and a
Markdown summary.

A run survives crashes and stops: an unfinished run of the same manifest in ``out`` is
resumed (``resume`` names one, ``auto_resume=False`` starts afresh), and SIGINT/SIGTERM stop
it cleanly (:mod:`qwbatch.core.stop`): in-flight work ends or is journaled, catalog parts are
written, and the summary counts what is ``left``.

The flow is orchestration only: every step is one call into :mod:`qwbatch.runs.runner`. Shards,
not images, are Prefect tasks (a task costs about 10 ms of overhead; a shard holds a few
hundred requests), and each task builds its own clients from settings, so any worker can run
any shard.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.runtime import deployment
from prefect.task_runners import ThreadPoolTaskRunner

from flows import artifacts
from flows.fanout import fan_out
from flows.secret_blocks import export_secret_blocks
from qwbatch import limits
from qwbatch.budget import BudgetMode, BudgetPolicy, BudgetSpec
from qwbatch.core.errors import BudgetExceededError
from qwbatch.core.settings import Settings, settings_with
from qwbatch.core.stop import STOP
from qwbatch.core.uris import require_absolute
from qwbatch.render.engine import ShardResult
from qwbatch.report import contact_sheet
from qwbatch.report import digest as digests
from qwbatch.report import numbers as reports
from qwbatch.runs import runner
from qwbatch.runs.options import RunOptions
from qwbatch.runs.summary import RunSummary
from qwbatch.storage import lease
from qwbatch.storage.stores import open_store


def load_settings(overrides: dict[str, Any] | None) -> Settings:
    """Settings from the environment, with the flow's explicit parameters on top."""
    export_secret_blocks()  # QWBATCH_SECRET_BLOCKS: secrets from Prefect Secret blocks
    return settings_with(overrides)


@task(name="plan", cache_policy=NO_CACHE, persist_result=False)
def plan_task(
    manifest: str,
    out: str,
    run_id: str,
    strict: bool,
    overrides: dict[str, Any],
    budget: BudgetPolicy | None = None,
    resume: str | None = None,
) -> runner.Prepared:
    return runner.prepare(
        manifest,
        out,
        settings=load_settings(overrides),
        run_id=run_id,
        resume=resume,
        strict=strict,
        budget=budget,
    )


@task(name="render-shard", cache_policy=NO_CACHE, persist_result=False, task_run_name="{shard_key}")
def render_shard_task(
    shard_key: str,
    out: str,
    run_id: str,
    manifest_dir: str,
    overrides: dict[str, Any],
    budget: BudgetSpec | None = None,
) -> ShardResult:
    return runner.render_shard(
        shard_key,
        out=out,
        run_id=run_id,
        manifest_dir=manifest_dir,
        settings=load_settings(overrides),
        budget=budget,
    )


@flow(
    name="render-manifest",
    # Prefect's default thread pool is unbounded; shards are I/O-bound, a few at once suffice.
    task_runner=ThreadPoolTaskRunner(max_workers=4),  # type: ignore[arg-type]  # Prefect's generic
    persist_result=False,
    log_prints=False,
)
def render_manifest(
    manifest: str,
    out: str,
    model: str | None = None,
    strict: bool = False,
    run_id: str | None = None,
    shard_size: int | None = None,
    rps: float | Literal["auto"] | None = None,
    max_in_flight: int | None = None,
    text_rerolls: int | None = None,
    text_max_cer: float | None = None,
    text_workers: int | None = None,
    budget: float | None = None,
    budget_mode: BudgetMode = "refuse",
    shard_deployment: str | None = None,
    shards_per_run: int = 1,
    resume: str | None = None,
    auto_resume: bool = True,
    wait: bool = False,
    digest: bool = False,
    target_size: str | None = None,
) -> RunSummary:
    """Render every new request of ``manifest`` into ``out`` and record it in the catalog.

    ``budget`` (the run's currency) refuses a plan that costs more, or with ``budget_mode``
    "trim" renders in priority and manifest order up to it; billed spend never passes it.
    An unfinished run of the same manifest in ``out`` is resumed (``resume`` names one).

    With ``shard_deployment`` (``"render-shards/<name>"``) the shards run as flow runs of that
    deployment, ``shards_per_run`` to a run, on every worker of its pool (``flows.fanout``);
    without it they run as tasks in this flow run.

    The run holds ``out``'s lease while it plans and renders: another run on the same
    ``out`` fails at once (DestBusyError, naming the holder), or waits with ``wait``.

    ``digest`` (the nightly deployment sets it) ends the run with a short Markdown artifact:
    rows new / changed / unchanged, spend, failures with reasons (:mod:`qwbatch.report.digest`).
    """
    options = RunOptions.pick(locals())  # the run's options among these parameters
    # Signals stop the shards cleanly (journal + catalog parts) instead of killing them.
    with STOP.handling(signal.SIGINT, signal.SIGTERM):
        return _render(
            manifest,
            out,
            options,
            shard_deployment=shard_deployment,
            shards_per_run=shards_per_run,
            digest=digest,
        )


def _render(
    manifest: str,
    out: str,
    options: RunOptions,
    *,
    shard_deployment: str | None,
    shards_per_run: int,
    digest: bool,
) -> RunSummary:
    began = time.monotonic()
    logger = get_run_logger()
    if deployment.id is not None:  # a worker's run: its working folder is a temporary one
        for what, value in (("manifest", manifest), ("out", out)):
            require_absolute(value, what=what, cwd=os.getcwd())
    overrides = options.settings_overrides()
    settings = load_settings(overrides)
    # One run holds DEST (storage.lease): a no-op under `qwbatch run`, which holds it already.
    with lease.hold(
        open_store(out, settings),
        ttl_s=settings.lease_ttl_s,
        wait=options.wait,
        label=f"render-manifest {manifest}",
        on_wait=logger.warning,
        on_lost=lambda message: STOP.set("lost DEST's lease"),
    ):
        return _render_held(
            manifest,
            out,
            options,
            shard_deployment=shard_deployment,
            shards_per_run=shards_per_run,
            overrides=overrides,
            settings=settings,
            began=began,
            digest=digest,
        )


def _render_held(
    manifest: str,
    out: str,
    options: RunOptions,
    *,
    shard_deployment: str | None,
    shards_per_run: int,
    overrides: dict[str, Any],
    settings: Settings,
    began: float,
    digest: bool,
) -> RunSummary:
    logger = get_run_logger()
    policy = options.policy()
    strict, resume = options.strict, options.resume
    run_id = runner.resolve_run_id(
        manifest,
        out,
        settings=settings,
        run_id=options.run_id,
        resume=resume,
        auto_resume=options.auto_resume,
        strict=strict,
        budget=policy,
    )
    try:
        prepared = plan_task(manifest, out, run_id, strict, overrides, policy, resume)
    except BudgetExceededError as exc:
        artifacts.refused(run_id, exc.message)
        raise
    plan = prepared.plan
    logger.info(
        "%s run %s: %d rows, %d rejected, %d already rendered, %d to render in %d shards",
        "resuming" if prepared.resumed else "starting",
        run_id,
        plan.rows_read,
        plan.rejected,
        plan.deduplicated,
        plan.requests,
        len(plan.shard_keys),
    )
    manifest_dir = str(Path(manifest).resolve().parent) if "://" not in manifest else "."
    spec = runner.open_budget(plan, settings)
    if spec is not None:
        logger.info(
            "budget: %s %s left for run %s, counted %s",
            spec.limit,
            spec.currency,
            run_id,
            "in this process" if spec.backend == "local" else f"on Prefect ({spec.counter_name})",
        )
    progress = artifacts.Progress(run_id, len(plan.shard_keys))
    try:
        if shard_deployment:
            shards = fan_out(
                shard_deployment,
                plan.shard_keys,
                per_run=shards_per_run,
                out=out,
                run_id=run_id,
                manifest_dir=manifest_dir,
                overrides=overrides,
                settings=settings,
                budget=spec,
            )
        else:
            # Rate, limit, in-flight count and 429s per minute of each model, in the run log.
            with limits.reporting(logger.info, settings.limits_status_s):
                futures = render_shard_task.map(
                    plan.shard_keys,
                    out=unmapped(out),
                    run_id=unmapped(run_id),
                    manifest_dir=unmapped(manifest_dir),
                    overrides=unmapped(overrides),
                    budget=unmapped(spec),
                )
                shards = []
                for future in as_completed(list(futures)):
                    shards.append(future.result())
                    progress.shard_finished()
    finally:
        if spec is not None:
            runner.close_budget(spec)
    summary = runner.finish(prepared, shards, out=out, settings=settings, began=began, save=False)
    store = open_store(out, settings)
    sheet_preview = contact_sheet.publish_run_sheet(store, summary)
    runner.save_summary(store, summary)
    artifacts.publish(
        summary,
        reports.report(store, run_id=run_id, missing_ok=True),
        sheet_preview=sheet_preview,
    )
    if digest:
        found = digests.digest(store, run_id)
        artifacts.publish_digest(run_id, digests.digest_markdown(found, currency=summary.currency))
    for line in summary.lines():
        logger.info(line)
    return summary
