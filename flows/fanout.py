"""Shards as flow runs: spread one run's shards over every worker of a work pool.

On a thread pool, all of a run's shards execute in the one process that picked up its flow
run. With ``render-manifest(..., shard_deployment="render-shards/render-shards")`` the run's
flow instead creates one flow run of the ``render-shards`` deployment per group of shards,
and whichever workers poll that deployment's work pool pick them up::

    render-manifest (one flow run, on some worker)
      plan → shard files in the store (runs/<run_id>/shards/)
      run_deployment("render-shards/…", {shard_keys: [group]}, timeout=0)   one per group
      wait for those flow runs (polling the Prefect API), read each shard's result file
      summary
    render-shards (many flow runs, on any worker)
      one Prefect task per shard: render it, write its result beside the shard file

Child flow runs are linked to the parent as subflows, and created with an idempotency key
made of the parent flow run id, the run id and the group number, so a parent retried with
the same run id finds its children instead of paying for them twice. If the parent fails
while waiting (cancelled, crashed), it asks the server to cancel the unfinished children.

The parent holds a worker slot while it waits: give workers a ``--limit`` above 1, or run the
parent on a queue of its own.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Sequence
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.futures import wait
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Cancelling
from prefect.task_runners import ThreadPoolTaskRunner

from flows.secret_blocks import export_secret_blocks
from qwbatch import limits
from qwbatch.budget import BudgetSpec
from qwbatch.core.errors import ShardRunError
from qwbatch.core.settings import Settings, settings_with
from qwbatch.core.stop import STOP
from qwbatch.render.engine import ShardResult
from qwbatch.render.shard_results import group_shards, read_shard_result, write_shard_result
from qwbatch.run import runner
from qwbatch.storage.stores import open_store

#: Seconds between two looks at the child flow runs' states.
POLL_INTERVAL_S = 2.0
#: Flow runs read per API call (the API's page limit is 200).
_PAGE = 200


def _settings(overrides: dict[str, Any] | None) -> Settings:
    export_secret_blocks()  # QWBATCH_SECRET_BLOCKS: secrets from Prefect Secret blocks
    return settings_with(overrides)


# --------------------------------------------------------------------------- the child flow


@task(name="render-shard", cache_policy=NO_CACHE, persist_result=False, task_run_name="{shard_key}")
def render_recorded_shard(
    shard_key: str,
    out: str,
    run_id: str,
    manifest_dir: str,
    overrides: dict[str, Any],
    budget: dict[str, str] | None = None,
) -> ShardResult:
    """Render one shard and leave its result in the store for the run's flow to read."""
    settings = _settings(overrides)
    result = runner.render_shard(
        shard_key,
        out=out,
        run_id=run_id,
        manifest_dir=manifest_dir,
        settings=settings,
        budget=BudgetSpec(**budget) if budget else None,  # type: ignore[arg-type]
    )
    write_shard_result(open_store(out, settings), result)
    return result


@flow(
    name="render-shards",
    task_runner=ThreadPoolTaskRunner(max_workers=4),  # type: ignore[arg-type]  # Prefect's generic
    persist_result=False,
    log_prints=False,
)
def render_shards(
    shard_keys: list[str],
    out: str,
    run_id: str,
    manifest_dir: str = ".",
    overrides: dict[str, Any] | None = None,
    budget: dict[str, str] | None = None,
) -> int:
    """Render some shards of run ``run_id`` (planned by render-manifest); how many.

    ``budget`` is the run's :class:`~qwbatch.budget.guard.BudgetSpec` as plain values; with the
    ``prefect`` backend every worker spends from the one counter on the server.
    """
    # A worker's SIGTERM (a cancel) stops the shards cleanly: journal, parts, results;
    # and the status of each model's limiter (rate, limit, in flight, 429s/min) in its log.
    status_every = _settings(overrides).limits_status_s
    with (
        STOP.handling(signal.SIGINT, signal.SIGTERM),
        limits.reporting(get_run_logger().info, status_every),
    ):
        futures = render_recorded_shard.map(
            shard_keys,
            out=unmapped(out),
            run_id=unmapped(run_id),
            manifest_dir=unmapped(manifest_dir),
            overrides=unmapped(overrides or {}),
            budget=unmapped(budget),
        )
        wait(futures)
    for future in futures:
        future.result()  # the first failure fails this flow run, after every shard ended
    return len(futures)


# --------------------------------------------------------------------------- the parent's side


def fan_out(
    deployment: str,
    shard_keys: Sequence[str],
    *,
    per_run: int,
    out: str,
    run_id: str,
    manifest_dir: str,
    overrides: dict[str, Any],
    settings: Settings,
    budget: BudgetSpec | None = None,
) -> list[ShardResult]:
    """Run ``shard_keys`` as flow runs of ``deployment`` and wait for them; their results.

    ``deployment`` is ``"render-shards/<deployment name>"``; ``per_run`` shards go to each
    flow run. ``out`` (and the manifest's inputs) must be reachable from every worker of
    that deployment's pool: an ``s3://`` store, or a folder all of them share. Raises
    ShardRunError naming the flow runs that did not complete, after all of them have ended
    (the shards that did finish are in the catalog either way).
    """
    logger = get_run_logger()
    groups = group_shards(shard_keys, per_run)
    parent = current_flow_run.id or run_id
    children: list[FlowRun] = []
    try:
        for index, group in enumerate(groups):
            child = run_deployment(
                deployment,
                parameters={
                    "shard_keys": group,
                    "out": out,
                    "run_id": run_id,
                    "manifest_dir": manifest_dir,
                    "overrides": overrides,
                    "budget": dataclasses.asdict(budget) if budget else None,
                },
                flow_run_name=f"{run_id}-{index:05d}",
                timeout=0,
                idempotency_key=f"{parent}/{run_id}/{index}",
            )
            # Sync context: Prefect's sync-compatible call returns the flow run itself.
            children.append(cast(FlowRun, child))
        logger.info(
            "run %s: %d shards in %d flow runs of %s",
            run_id,
            len(shard_keys),
            len(groups),
            deployment,
        )
        ended = _wait_for([c.id for c in children], logger)
    except BaseException:
        _cancel_unfinished([c.id for c in children])
        raise
    store = open_store(out, settings)
    failed = [run for run in ended if not (run.state and run.state.is_completed())]
    results = {key: read_shard_result(store, key) for key in shard_keys}
    missing = [key for key, result in results.items() if result is None]
    if failed or missing:
        runs = ", ".join(f"{r.name} ({r.state.name if r.state else 'no state'})" for r in failed)
        raise ShardRunError(
            f"run {run_id}: {len(missing)} of {len(shard_keys)} shards did not finish"
            + (f"; flow runs not completed: {runs}" if runs else "")
            + "; rerun the manifest to render what is missing (finished images are not paid "
            "for again)"
        )
    return [result for result in results.values() if result is not None]


def _wait_for(ids: Sequence[UUID], logger: Any) -> list[FlowRun]:
    """Poll the API until every flow run in ``ids`` is in a final state; the final runs."""
    pending = list(ids)
    ended: list[FlowRun] = []
    last_report: tuple[int, int] | None = None
    with get_client(sync_client=True) as client:
        while pending:
            still: list[UUID] = []
            for start in range(0, len(pending), _PAGE):
                page = pending[start : start + _PAGE]
                runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=page)), limit=_PAGE
                )
                # A run the server no longer has is not waited for: its shards' results
                # will be missing, and the caller reports them.
                for run in runs:
                    if run.state is not None and run.state.is_final():
                        ended.append(run)
                    else:
                        still.append(run.id)
            pending = still
            report = (len(ended), len(pending))
            if report != last_report:
                logger.info("shard flow runs: %d ended, %d to go", *report)
                last_report = report
            if pending:
                time.sleep(POLL_INTERVAL_S)
    return ended


def _cancel_unfinished(ids: Sequence[UUID]) -> None:
    """Best effort: ask the server to cancel child flow runs that have not ended."""
    if not ids:
        return
    try:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(ids)))
            )
            for run in runs:
                if run.state is not None and not run.state.is_final():
                    client.set_flow_run_state(run.id, Cancelling(), force=True)
    except Exception:  # best effort while already failing: the original error is raised
        get_run_logger().warning("could not cancel the unfinished shard flow runs")
