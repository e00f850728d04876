"""The worker process of ``bench.bench_limits``: one shard rendering unique requests as fast
as its limiter lets it, for ``--duration`` seconds, against the simulator; its summary (sends,
429s, the status line, the limiter's state once a second) as the last line of stdout.

``bench_limits.py worker …`` runs it (each worker is its own process, as on its own machine).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

MODEL = "qwen-image-2.0"


class _PrefectPerRequest:
    """The baseline: Prefect's ``rate_limit()`` taking one slot per request."""

    def __init__(self, name: str, max_in_flight: int) -> None:
        from qwbatch.limits.gate import Gate

        self.name = name
        self.gate = Gate(max_in_flight)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        from prefect.concurrency.asyncio import rate_limit

        await self.gate.acquire()
        try:
            await rate_limit(self.name, occupy=1, strict=True)
            yield
        finally:
            self.gate.release()

    def on_success(self) -> None:
        pass

    def on_throttle(self, retry_after: float | None = None) -> None:
        pass


def _baseline_registry(scope: str, rps: float, max_in_flight: int) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectAlreadyExists

    from qwbatch.limits.prefect_limit import limit_name
    from qwbatch.limits.registry import LimiterRegistry

    name = limit_name(scope, MODEL)

    async def create() -> None:
        async with get_client() as client:
            # Another worker may create it between our read and our create.
            with contextlib.suppress(ObjectAlreadyExists):
                await client.upsert_global_concurrency_limit_by_name(
                    name, limit=max(1, round(rps)), slot_decay_per_second=rps
                )

    asyncio.run(create())
    limiter = _PrefectPerRequest(name, max_in_flight)

    class Registry(LimiterRegistry):
        def for_model(self, model: Any, settings: Any) -> Any:
            return limiter

    return Registry()


def worker(args: argparse.Namespace) -> None:
    """One shard: render unique requests until ``--duration`` seconds have passed."""
    from qwbatch.core.keys import RequestFields, request_key
    from qwbatch.core.model_table import ModelTable
    from qwbatch.core.settings import Settings
    from qwbatch.core.types import PlanItem, RenderRequest
    from qwbatch.limits import LIMITERS
    from qwbatch.providers.dashscope import DashScopeProvider
    from qwbatch.render.engine import Engine
    from qwbatch.storage.stores import open_store

    rps = args.rps if args.rps == "auto" else float(args.rps)
    # Room for R × 1 s of latency, and then some, unless the caller sets the cap.
    max_in_flight = args.max_in_flight or max(4, int((args.table_rps or float(rps)) * 1.6))
    models_file = None
    if args.table_rps:  # the model table's figure, where --rps auto starts
        models_file = Path(args.out).with_suffix(".models.toml")
        models_file.parent.mkdir(parents=True, exist_ok=True)
        models_file.write_text(f'[models."{MODEL}"]\nrps = {args.table_rps}\n', "utf-8")
    settings = Settings(
        dashscope_base_url=args.base_url,
        dashscope_api_key=args.api_key,
        models_file=models_file,
        rps=rps,
        max_in_flight=max_in_flight,
        limit_scope=args.scope,
        backoff_base_s=1.0,
        backoff_max_s=10.0,
        max_attempts=50,
    )
    table = ModelTable.load(models_file)
    if args.limiter == "qwbatch":
        registry = LIMITERS
        limiter = registry.for_model(table.get(MODEL), settings)  # starts leasing set-up
        while limiter.shared is not None and limiter.shared.describe().startswith("starting"):
            time.sleep(0.05)
    else:
        registry = _baseline_registry(args.scope, float(args.rps), max_in_flight)
    count = int((args.table_rps or float(rps)) * 4 * args.duration * 2) + 50

    def make(i: int) -> PlanItem:
        prompt = f"{args.prefix} request {i}"
        fields = RequestFields(model=MODEL, mode="generate", prompt=prompt, size="512*512", seed=i)
        key = request_key(fields)
        return PlanItem(
            RenderRequest(
                row_id=f"r{i}",
                row_number=i,
                request_key=key,
                model=MODEL,
                mode="generate",
                prompt=prompt,
                size="512*512",
                seed=i,
            )
        )

    items = [make(i) for i in range(count)]
    store = open_store(args.out, settings)
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())

    async def go() -> None:
        async with DashScopeProvider.from_settings(settings) as provider:
            engine = Engine(
                provider=provider,
                store=store,
                table=table,
                settings=settings,
                run_id=args.prefix,
                limiters=registry,
                concurrency=max_in_flight * 3,
            )
            await asyncio.sleep(max(0.0, start_at - time.time()))
            try:
                async with asyncio.timeout(start_at + args.duration - time.time()):
                    await engine.run_items(items)
            except TimeoutError:
                pass

    samples: list[list[float | None]] = []
    sampling = threading.Event()

    def sample() -> None:  # the limiter's state once a second, for --timeline
        if args.limiter != "qwbatch":
            return
        limiter_now = LIMITERS.for_model(table.get(MODEL), settings)
        while not sampling.wait(1.0):
            learner = limiter_now.learner
            samples.append(
                [round(time.time() - start_at, 1), round(limiter_now.current_rate(), 2),
                 learner.learned and round(learner.learned, 2), limiter_now.sent,
                 limiter_now.throttled]
            )  # fmt: skip

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    asyncio.run(go())
    sampling.set()
    summary: dict[str, Any] = {"limiter": args.limiter, "timeline": samples}
    if args.limiter == "qwbatch":
        from qwbatch.limits.status import status_of

        limiter_now = LIMITERS.for_model(table.get(MODEL), settings)
        if limiter_now.shared is not None:
            pool = limiter_now.shared.pool
            summary.update(
                tokens_dropped=pool.dropped + pool.tokens,
                leases=getattr(limiter_now.shared, "leases_taken", None),
                denied=getattr(limiter_now.shared, "leases_denied", None),
            )
        summary.update(
            sent=limiter_now.sent,
            throttled=limiter_now.throttled,
            line=status_of(limiter_now).line(),
        )
    shutil.rmtree(args.out, ignore_errors=True)
    print(json.dumps(summary), flush=True)
