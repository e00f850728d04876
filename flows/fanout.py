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
from collections.abc import Callable, Sequence
from typing import Any, cast
from uuid import UUID

import httpx
from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.futures import wait
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Cancelling, Crashed
from prefect.task_runners import ThreadPoolTaskRunner

from flows.secret_blocks import export_secret_blocks
from qwbatch import limits
from qwbatch.budget import BudgetSpec
from qwbatch.core.errors import ShardRunError
from qwbatch.core.settings import Settings, settings_with
from qwbatch.core.stop import STOP
from qwbatch.render.engine import ShardResult
from qwbatch.render.shard_results import group_shards, read_shard_result, write_shard_result
from qwbatch.runs import liveness, runner
from qwbatch.storage import lease
from qwbatch.storage.layout import shard_lease_key
from qwbatch.storage.stores import ObjectStore, open_store

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
    """Render one shard and leave its result in the store for the run's flow to read.

    The shard's lease is held while it renders: the run's flow reads it as this worker's
    heartbeat, and a worker started on the shard again after this one was lost waits for
    the lease to expire (or be released), so two workers never render one shard at once."""
    settings = _settings(overrides)
    store = open_store(out, settings)
    with lease.hold(
        store,
        key=shard_lease_key(shard_key),
        ttl_s=settings.lease_ttl_s,
        wait=True,
        label=f"render-shards {shard_key}",
        on_lost=lambda message: STOP.set("lost a shard's lease"),
    ):
        result = runner.render_shard(
            shard_key,
            out=out,
            run_id=run_id,
            manifest_dir=manifest_dir,
            settings=settings,
            budget=BudgetSpec(**budget) if budget else None,  # type: ignore[arg-type]
        )
        write_shard_result(store, result)
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
    that deployment's pool: an ``s3://`` store, or a folder all of them share.

    A flow run whose worker died (no shard lease renewed for three lease lifetimes, see
    :mod:`qwbatch.runs.liveness`) is marked crashed, and its unfinished shards are started
    again in a new flow run, as are those of a flow run that crashed or failed, up to
    ``RESUBMITS`` times per group. Raises ShardRunError naming the flow runs that did not
    complete, after all of them have ended (the shards that did finish are in the catalog
    either way).
    """
    logger = get_run_logger()
    groups = group_shards(shard_keys, per_run)
    parent = current_flow_run.id or run_id
    store = open_store(out, settings)

    def submit(index: int, group: list[str], attempt: int) -> FlowRun:
        again = f"/{attempt}" if attempt else ""
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
            flow_run_name=f"{run_id}-{index:05d}" + (f"-r{attempt}" if attempt else ""),
            timeout=0,
            idempotency_key=f"{parent}/{run_id}/{index}{again}",
        )
        # Sync context: Prefect's sync-compatible call returns the flow run itself.
        return cast(FlowRun, child)

    children: dict[UUID, _Child] = {}
    try:
        for index, group in enumerate(groups):
            children[submit(index, group, 0).id] = _Child(index, group, 0)
        logger.info(
            "run %s: %d shards in %d flow runs of %s",
            run_id,
            len(shard_keys),
            len(groups),
            deployment,
        )
        ended = _Waiter(children, store, settings, submit, logger).wait()
    except BaseException:
        _cancel_unfinished(list(children))
        raise
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


#: Times one group of shards is started again after its flow run was lost or crashed.
RESUBMITS = 2
#: Seconds a shard flow run may stay ``Pending`` (a worker took it and is starting its
#: process, its container, its pod: an image pull, a node scaling up) before its silence
#: counts. Three lease lifetimes (3 minutes by default) judge a run that renders; one that
#: has not started yet holds no lease to renew, and a slow start is not a dead worker.
START_GRACE_S = 600.0


@dataclasses.dataclass(frozen=True, slots=True)
class _Child:
    """A shard flow run's place in the run: its group's index, shards and attempt."""

    index: int
    group: list[str]
    attempt: int


class _Waiter:
    """Polls the child flow runs until each has ended or been replaced (see fan_out)."""

    def __init__(
        self,
        children: dict[UUID, _Child],
        store: ObjectStore,
        settings: Settings,
        submit: Callable[[int, list[str], int], FlowRun],
        logger: Any,
    ) -> None:
        self.children = children
        self.store = store
        self.submit = submit
        self.logger = logger
        #: A flow run silent this long (seconds) is lost: three lease lifetimes.
        self.grace_s = 3 * settings.lease_ttl_s
        #: Leases are read this often (seconds), not at every poll.
        self.check_every_s = max(POLL_INTERVAL_S, settings.lease_ttl_s / 2)

    def wait(self) -> list[FlowRun]:
        """Every flow run that ended and was not replaced, in its final state."""
        pending = list(self.children)
        ended: list[FlowRun] = []
        last_report: tuple[int, int] | None = None
        last_check = 0.0
        with get_client(sync_client=True) as client:
            while pending:
                check = time.monotonic() - last_check >= self.check_every_s
                last_check = time.monotonic() if check else last_check
                still: list[UUID] = []
                for start in range(0, len(pending), _PAGE):
                    page = pending[start : start + _PAGE]
                    try:
                        runs = client.read_flow_runs(
                            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=page)),
                            limit=_PAGE,
                        )
                    except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                        # A Prefect server restarting: its flow runs are still there after.
                        self.logger.warning("cannot read the shard flow runs (%s); waiting", exc)
                        still.extend(page)
                        continue
                    # A run the server no longer has is not waited for: its shards' results
                    # will be missing, and the caller reports them.
                    for run in runs:
                        outcome = self._look(client, run, check)
                        if outcome == "ended":
                            ended.append(run)
                        elif outcome == "waiting":
                            still.append(run.id)
                        elif isinstance(outcome, UUID):
                            still.append(outcome)
                pending = still
                report = (len(ended), len(pending))
                if report != last_report:
                    self.logger.info("shard flow runs: %d ended, %d to go", *report)
                    last_report = report
                if pending:
                    time.sleep(POLL_INTERVAL_S)
        return ended

    def _look(self, client: Any, run: FlowRun, check: bool) -> str | UUID:
        """What became of ``run``: "ended", "waiting", "done" (its shards all finished,
        whatever its state), or the id of the flow run that replaces it."""
        state = run.state
        child = self.children[run.id]
        if state is not None and state.is_final():
            if state.is_completed():
                return "ended"
            why = f"ended {state.name}"
        elif check and state is not None and state.type in (StateType.RUNNING, StateType.PENDING):
            silent = liveness.silent_for(
                self.store,
                child.group,
                started_at=state.timestamp.timestamp(),
                now=time.time(),
            )
            grace = self.grace_s
            if state.type == StateType.PENDING:
                grace = max(grace, START_GRACE_S)
            if silent is None or silent <= grace:
                return "waiting"
            why = f"lost: no sign of life from its worker for {silent:.0f} s"
            client.set_flow_run_state(
                run.id, Crashed(message=f"qwbatch: {why}; its shards run again"), force=True
            )
        else:
            return "waiting"
        left = liveness.unfinished(self.store, child.group)
        if not left:
            return "done"  # every shard finished before the flow run was lost or crashed
        if child.attempt >= RESUBMITS:
            self.logger.warning("shard flow run %s %s; not started again", run.name, why)
            return "ended"
        replacement = self.submit(child.index, left, child.attempt + 1)
        self.children[replacement.id] = _Child(child.index, left, child.attempt + 1)
        self.logger.warning(
            "shard flow run %s %s: its %d unfinished shards run again as %s (the journal "
            "collects what it had submitted)",
            run.name,
            why,
            len(left),
            replacement.name,
        )
        return replacement.id


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
