"""``render-manifest``: manifest → plan → one Prefect task per shard → catalog → summary.

The flow is orchestration only: every step is one call into :mod:`qwbatch.runner`. Shards,
not images, are Prefect tasks (a task costs about 10 ms of overhead; a shard holds a few
hundred requests), and each task builds its own clients from settings, so any worker can run
any shard.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from qwbatch import contact_sheet, runner
from qwbatch.config import Settings
from qwbatch.engine import ShardResult
from qwbatch.run_markdown import summary_markdown
from qwbatch.stop import STOP
from qwbatch.storage import open_store
from qwbatch.summary import RunSummary


def load_settings(overrides: dict[str, Any] | None) -> Settings:
    """Settings from the environment, with the flow's explicit parameters on top."""
    return Settings(**{k: v for k, v in (overrides or {}).items() if v is not None})


@task(name="plan", cache_policy=NO_CACHE, persist_result=False)
def plan_task(
    manifest: str,
    out: str,
    run_id: str | None,
    resume: str | None,
    auto_resume: bool,
    strict: bool,
    overrides: dict[str, Any],
) -> runner.Prepared:
    return runner.prepare(
        manifest,
        out,
        settings=load_settings(overrides),
        run_id=run_id,
        resume=resume,
        auto_resume=auto_resume,
        strict=strict,
    )


@task(name="render-shard", cache_policy=NO_CACHE, persist_result=False, task_run_name="{shard_key}")
def render_shard_task(
    shard_key: str, out: str, run_id: str, manifest_dir: str, overrides: dict[str, Any]
) -> ShardResult:
    return runner.render_shard(
        shard_key,
        out=out,
        run_id=run_id,
        manifest_dir=manifest_dir,
        settings=load_settings(overrides),
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
    rps: float | None = None,
    max_in_flight: int | None = None,
    resume: str | None = None,
    auto_resume: bool = True,
) -> RunSummary:
    """Render every new request of ``manifest`` into ``out`` and record it in the catalog.

    An unfinished run of the same manifest in ``out`` is resumed (``resume`` names one;
    ``auto_resume=False`` starts afresh). SIGINT/SIGTERM stop it cleanly (qwbatch.stop).
    """
    # Signals stop the shards cleanly (journal + catalog part) instead of killing them.
    with STOP.handling(signal.SIGINT, signal.SIGTERM):
        began = time.monotonic()
        logger = get_run_logger()
        overrides: dict[str, Any] = {
            "default_model": model,
            "shard_size": shard_size,
            "rps": rps,
            "max_in_flight": max_in_flight,
        }
        settings = load_settings(overrides)
        prepared = plan_task(manifest, out, run_id, resume, auto_resume, strict, overrides)
        plan = prepared.plan
        run_id = plan.run_id
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
        futures = render_shard_task.map(
            plan.shard_keys,
            out=unmapped(out),
            run_id=unmapped(run_id),
            manifest_dir=unmapped(manifest_dir),
            overrides=unmapped(overrides),
        )
        shards = [future.result() for future in futures]
        summary = runner.finish(
            prepared, shards, out=out, settings=settings, began=began, save=False
        )
        store = open_store(out, settings)
        sheet_preview = contact_sheet.publish_run_sheet(store, summary)
        runner.save_summary(store, summary)
        for line in summary.lines():
            logger.info(line)
        create_markdown_artifact(
            summary_markdown(summary, sheet_preview=sheet_preview),
            key="render-summary",
            description=f"qwbatch run {run_id}: summary and contact sheet",
        )
        return summary
