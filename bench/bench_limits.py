"""Benchmark: how close a run gets to the provider's rate limit, and how many 429s it pays.

Against the bundled simulator, which enforces R requests per second per model (its bucket
holds one second of traffic, like the provider's) and answers after 0.2–1.0 s, worker
processes render as fast as their limiter lets them for ``--duration`` seconds. Each shard is
its own process (as on separate machines); all share one Prefect server, which this script
starts on loopback with a temporary SQLite home unless ``--prefect-api-url`` names one.

Two limiters run side by side, case by case, in the same run:

- ``qwbatch``: qwbatch's limiter (paced sends, a per-process in-flight cap, rate tokens
  leased in batches from a Prefect global concurrency limit);
- ``prefect-1``: Prefect's ``rate_limit()`` taking one slot per request, plus the same local
  in-flight cap (the baseline).

Printed per row: requests per second the simulator let through its rate check ÷ R (its
ledger's ``admitted_at`` within the window, the workers' 5 s ramp-up included; the same
after the ramp is printed beside it, not judged) and the share of the requests offered in
the window that it answered 429. Goal, for qwbatch's rows: at least 0.95 of R and at most 2 %
429s. The exit status is 1 when a qwbatch row misses it in rows of at least
:data:`GOAL_MIN_S` seconds (shorter rows are mostly start-up and ramp; not judged).

    .venv/bin/python bench/bench_limits.py                          # 120 s a row, ~15 min
    .venv/bin/python bench/bench_limits.py --duration 5 --cases 20x1  # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-bench-limits"
MODEL = "qwen-image-2.0"
LIMITERS = ("qwbatch", "prefect-1")
#: The goal: admitted requests per second ÷ R at least this, 429s at most this share.
GOAL_RATIO = 0.95
GOAL_429 = 0.02
#: Rows shorter than this (seconds) are not judged against the goal.
GOAL_MIN_S = 60.0
#: Seconds of a worker's ramp-up (``LimitSpec.ramp_s``); counted in the judged ratio.
RAMP_S = 5.0


@dataclass(frozen=True)
class Case:
    rps: float
    shards: int
    limiter: str


@dataclass(frozen=True)
class Row:
    case: Case
    accepted: int
    requests: int
    throttled: int
    duration: float
    #: Requests admitted after the first :data:`RAMP_S` seconds of the window.
    accepted_after_ramp: int = 0

    @property
    def ratio(self) -> float:
        return self.accepted / self.duration / self.case.rps

    @property
    def ratio_after_ramp(self) -> float:
        """Admitted req/s ÷ R once every worker has ramped up (not judged; shows the ramp)."""
        return self.accepted_after_ramp / max(self.duration - RAMP_S, 1e-9) / self.case.rps

    @property
    def share_429(self) -> float:
        return self.throttled / self.requests if self.requests else 0.0

    @property
    def meets_goal(self) -> bool:
        return self.ratio >= GOAL_RATIO and self.share_429 <= GOAL_429


def parse_cases(text: str) -> list[tuple[float, int]]:
    """``"20x1,20x4,2x4"`` → [(20.0, 1), (20.0, 4), (2.0, 4)]: R requests/s × shards."""
    cases = []
    for item in text.split(","):
        rps, _, shards = item.strip().partition("x")
        cases.append((float(rps), int(shards or 1)))
    return cases


def _env(api_url: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {
        **os.environ,
        "PYTHONPATH": path,
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }


@contextmanager
def prefect_server() -> Iterator[str]:
    """A real Prefect server on loopback (Prefect's test harness, as ``bench_kill`` uses),
    with a temporary SQLite home; its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with tempfile.TemporaryDirectory(prefix="qwbatch-bench-prefect-") as home:
        os.environ["PREFECT_HOME"] = home
        os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        with prefect_test_harness(server_startup_timeout=120):
            yield str(PREFECT_API_URL.value())


def run_workers(
    sim: Any,
    api_url: str,
    *,
    rps: float,
    shards: int,
    limiter: str,
    duration: float,
    work: Path,
    max_in_flight: int | None = None,
) -> tuple[float, list[dict[str, Any]]]:
    """Run ``shards`` worker processes against ``sim`` for ``duration`` seconds.

    Returns the wall-clock time they started together and each worker's summary.
    """
    scope = f"bench-{uuid.uuid4().hex[:8]}"  # fresh shared limits every time
    workers = []
    for index in range(shards):
        command = [
            sys.executable,
            __file__,
            "worker",
            "--base-url",
            sim.base_url,
            "--api-key",
            sim.api_key or KEY,
            "--rps",
            str(rps),
            "--limiter",
            limiter,
            "--scope",
            scope,
            "--duration",
            str(duration),
            "--out",
            str(work / f"{scope}-{index}"),
            "--prefix",
            f"{scope}-{index}",
        ]
        if max_in_flight:
            command += ["--max-in-flight", str(max_in_flight)]
        workers.append(
            subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=_env(api_url),
            )
        )
    for worker in workers:  # each says "ready" once imported and its limits are set up
        line = worker.stdout.readline().strip() if worker.stdout else ""
        if line != "ready":
            raise RuntimeError(f"worker did not start (said {line!r})")
    start_at = time.time() + 0.5
    for worker in workers:
        if worker.stdin:
            worker.stdin.write(f"{start_at}\n")
            worker.stdin.close()
    summaries = []
    for worker in workers:
        out = worker.stdout.read() if worker.stdout else ""
        if worker.wait(duration + 120):
            raise RuntimeError(f"worker failed with exit code {worker.returncode}")
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    return start_at, summaries


def run_case(case: Case, sim: Any, api_url: str, duration: float, work: Path) -> Row:
    """One row: the simulator enforces ``case.rps``; what it accepted in the window."""
    sim.reset()
    sim.configure(rps=case.rps)
    start_at, _ = run_workers(
        sim,
        api_url,
        rps=case.rps,
        shards=case.shards,
        limiter=case.limiter,
        duration=duration,
        work=work,
    )
    ledger = sim.ledger()

    def within(times: list[float], skip: float = 0.0) -> int:
        return sum(1 for t in times if start_at + skip <= t < start_at + duration)

    # At the simulator's rate check: what the account was offered, and what it let through.
    offered, admitted = within(ledger["offered_at"]), within(ledger["admitted_at"])
    return Row(
        case=case,
        accepted=admitted,
        requests=offered,
        throttled=offered - admitted,
        duration=duration,
        accepted_after_ramp=within(ledger["admitted_at"], RAMP_S),
    )


# -- worker process -------------------------------------------------------------------------


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

    from qwbatch.limits.registry import LimiterRegistry
    from qwbatch.limits.shared import limit_name

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
    from qwbatch.core.keys import request_key
    from qwbatch.core.model_table import ModelTable
    from qwbatch.core.settings import Settings
    from qwbatch.core.types import PlanItem, RenderRequest
    from qwbatch.limits import LIMITERS
    from qwbatch.providers.dashscope import DashScopeProvider
    from qwbatch.render.engine import Engine
    from qwbatch.storage.stores import open_store

    # Room for R × 1 s of latency, and then some, unless the caller sets the cap.
    max_in_flight = args.max_in_flight or max(4, int(args.rps * 1.6))
    settings = Settings(
        dashscope_base_url=args.base_url,
        dashscope_api_key=args.api_key,
        rps=args.rps,
        max_in_flight=max_in_flight,
        limit_scope=args.scope,
        backoff_base_s=1.0,
        backoff_max_s=10.0,
        max_attempts=50,
    )
    table = ModelTable.load()
    if args.limiter == "qwbatch":
        registry = LIMITERS
        limiter = registry.for_model(table.get(MODEL), settings)  # starts leasing set-up
        while limiter.shared is not None and limiter.shared.describe().startswith("starting"):
            time.sleep(0.05)
    else:
        registry = _baseline_registry(args.scope, args.rps, max_in_flight)
    count = int(args.rps * args.duration * 2) + 50

    def make(i: int) -> PlanItem:
        prompt = f"{args.prefix} request {i}"
        key = request_key(model=MODEL, mode="generate", prompt=prompt, size="512*512", seed=i)
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

    asyncio.run(go())
    summary: dict[str, Any] = {"limiter": args.limiter}
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


# -- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds per row")
    parser.add_argument("--cases", default="20x1,20x4,2x4", help="R×shards, comma-separated")
    parser.add_argument("--limiters", default=",".join(LIMITERS), help="qwbatch,prefect-1")
    parser.add_argument("--latency", type=float, default=0.2, help="simulator latency, s")
    parser.add_argument("--jitter", type=float, default=0.8, help="extra random latency, s")
    parser.add_argument("--prefect-api-url", help="use this Prefect server instead of one")
    one = sub.add_parser("worker", help=argparse.SUPPRESS)
    one.add_argument("--base-url", required=True)
    one.add_argument("--rps", type=float, required=True)
    one.add_argument("--limiter", choices=LIMITERS, required=True)
    one.add_argument("--scope", required=True)
    one.add_argument("--duration", type=float, required=True)
    one.add_argument("--out", required=True)
    one.add_argument("--prefix", required=True)
    one.add_argument("--api-key", default=KEY)
    one.add_argument("--max-in-flight", type=int, help="the cap (default: from the rate)")
    args = parser.parse_args(argv)
    if args.command == "worker":
        worker(args)
        return 0

    from qwbatch.simulator import SimulatorConfig, running

    cases = [
        Case(rps, shards, limiter)
        for rps, shards in parse_cases(args.cases)
        for limiter in args.limiters.split(",")
    ]
    config = SimulatorConfig(
        api_key=KEY, fast=True, latency_s=args.latency, latency_jitter_s=args.jitter
    )
    rows = []
    began = time.monotonic()
    with (
        nullcontext(args.prefect_api_url) if args.prefect_api_url else prefect_server() as api_url,
        running(config) as sim,
        tempfile.TemporaryDirectory() as work,
    ):
        print(
            f"simulator latency {args.latency:g}–{args.latency + args.jitter:g} s; "
            f"{args.duration:g} s per row; Prefect at {api_url}",
            flush=True,
        )
        for case in cases:
            row = run_case(case, sim, api_url, args.duration, Path(work))
            rows.append(row)
            print(
                f"  R={case.rps:g} shards={case.shards} {case.limiter}: {row.ratio:.3f} of R "
                f"({row.ratio_after_ramp:.3f} after the ramp), 429s {row.share_429:.1%}",
                flush=True,
            )
    print()
    print(
        "| R (req/s) | shards | limiter | admitted req/s | ÷ R | ÷ R after the ramp "
        "| 429 share | requests |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for row in rows:
        case = row.case
        print(
            f"| {case.rps:g} | {case.shards} | {case.limiter} | {row.accepted / row.duration:.2f} "
            f"| {row.ratio:.3f} | {row.ratio_after_ramp:.3f} | {row.share_429:.2%} "
            f"| {row.requests} |"
        )
    print(f"\n{len(rows)} rows in {time.monotonic() - began:.0f} s")
    ours = [row for row in rows if row.case.limiter == "qwbatch"]
    if args.duration < GOAL_MIN_S:
        print(f"goal not judged: rows shorter than {GOAL_MIN_S:g} s")
        return 0
    missed = [row for row in ours if not row.meets_goal]
    print(
        f"goal (>= {GOAL_RATIO:g} of R, <= {GOAL_429:.0%} 429s) for qwbatch: "
        + ("met in every row" if not missed else f"MISSED in {len(missed)} of {len(ours)} rows")
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
