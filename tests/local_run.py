"""Running a whole manifest through the runner's steps without Prefect (shards in turn).

The flow does the same three calls with one Prefect task per shard; tests that are about
resume, faults or stores rather than orchestration use this to stay fast.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from support import engine_settings

from qwbatch.budget import BudgetPolicy, BudgetSpec
from qwbatch.core.settings import Settings
from qwbatch.core.stop import StopSignal
from qwbatch.render.engine import ShardResult
from qwbatch.runs import runner
from qwbatch.runs.summary import RunSummary
from qwbatch.simulator import SimulatorHandle
from qwbatch.storage.stores import ObjectStore


def render_all(
    manifest: Path,
    out: str,
    settings: Settings,
    *,
    run_id: str | None = None,
    resume: str | None = None,
    auto_resume: bool = True,
    store: ObjectStore | None = None,
    stop: StopSignal | None = None,
    budget: BudgetPolicy | None = None,
) -> RunSummary:
    """prepare → render each shard → finish, as ``render_manifest`` does (within ``budget``)."""
    began = time.monotonic()
    stop = stop or StopSignal()
    prepared = runner.prepare(
        str(manifest),
        out,
        settings=settings,
        run_id=run_id,
        resume=resume,
        auto_resume=auto_resume,
        budget=budget,
    )
    spec = runner.open_budget(prepared.plan, settings)
    try:
        shards = _render_shards(prepared, manifest, out, settings, store, stop, spec)
    finally:
        if spec is not None:
            runner.close_budget(spec)
    return runner.finish(prepared, shards, out=out, settings=settings, began=began, stop=stop)


def _render_shards(
    prepared: runner.Prepared,
    manifest: Path,
    out: str,
    settings: Settings,
    store: ObjectStore | None,
    stop: StopSignal,
    spec: BudgetSpec | None,
) -> list[ShardResult]:
    return [
        asyncio.run(
            runner.render_shard_async(
                key,
                out=out,
                run_id=prepared.plan.run_id,
                manifest_dir=str(manifest.parent),
                settings=settings,
                store=store,
                budget=spec,
                stop=stop,
            )
        )
        for key in prepared.plan.shard_keys
    ]


def fast_settings(sim: SimulatorHandle, api_key: str, **overrides: Any) -> Settings:
    """:func:`support.engine_settings` with ``api_key`` and a 50 ms backoff cap, as this helper
    used to spell it. Only tests/render/test_breaker.py (new on main while the shared settings
    moved; left to its owner) still calls it: re-point that file, then delete this."""
    return engine_settings(
        sim, **{"dashscope_api_key": api_key, "backoff_max_s": 0.05, **overrides}
    )
