"""Benchmark: how close a run gets to the account's rate limit, and how many 429s it pays,
when it is told the limit, told too much, told nothing (``--rps auto``), and when the limit
falls mid-run.

Against the bundled simulator, which enforces R requests per second per model (its bucket
holds one second of traffic, like the provider's) and answers after 0.2–1.0 s, worker
processes render as fast as their limiter lets them for ``--duration`` seconds. Each shard is
its own process (as on separate machines); all share one Prefect server, which this script
starts on loopback with a temporary SQLite home unless ``--prefect-api-url`` names one.
Each row starts from nothing learned (a fresh account scope).

Scenarios, each with 1 worker and with ``--workers`` more (their sum judged):

- ``right``: told R. Goal: at least 0.95 of R, at most 2 % of requests answered 429;
- ``told-2R``: told twice the limit. Same goal;
- ``auto``: ``--rps auto`` with the model table's figure at R/4. Goals: 0.9 of R reached
  (admitted over 5 s) within 30 s, at most 3 % 429s over the run;
- ``halved``: told R; the simulator's limit falls to R/2 at :data:`HALVED_AT` of the row
  (another job took half). Goals: within 5 s, offered at most the new limit (the 5 s after
  them, with :data:`UNDER_SLACK` for counting whole requests), and from 30 s after the fall
  at least 0.9 of it admitted.

Ratios are read from the simulator's ledger (``offered_at``: requests that reached its rate
check; ``admitted_at``: those it let through), from one run. Rows shorter than
:data:`GOAL_MIN_S` seconds are printed, not judged (``--smoke``); otherwise the exit status
is 1 when a goal is missed.

    .venv/bin/python -m bench.bench_limits                    # 90 s a row, ~20 min
    .venv/bin/python -m bench.bench_limits --smoke            # 10 s a row, 1 worker
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-bench-limits"
MODEL = "qwen-image-2.0"
LIMITERS = ("qwbatch", "prefect-1")
SCENARIOS = ("right", "told-2R", "auto", "halved")
#: Goals: admitted ÷ R at least GOAL_RATIO with at most GOAL_429 of requests answered 429
#: (``auto``: at most AUTO_429); ``auto`` reaches AUTO_REACH of R within AUTO_WITHIN_S;
#: ``halved`` is under the new limit within UNDER_WITHIN_S and at AFTER_RATIO of it from
#: AFTER_S after the fall.
GOAL_RATIO = 0.95
GOAL_429 = 0.02
AUTO_429 = 0.03
AUTO_REACH = 0.9
AUTO_WITHIN_S = 30.0
UNDER_WITHIN_S = 5.0
#: The offered rate over 5 s is counted in whole requests: one more than the new limit
#: allows in those 5 s is not judged over it.
UNDER_SLACK = 1
AFTER_RATIO = 0.9
AFTER_S = 30.0
#: The fraction of a ``halved`` row after which the limit falls.
HALVED_AT = 1 / 3
#: Rows shorter than this (seconds) are not judged against the goals.
GOAL_MIN_S = 60.0


@dataclass(frozen=True)
class Case:
    scenario: str
    rps: float
    shards: int
    limiter: str = "qwbatch"

    @property
    def told(self) -> str:
        """What the workers are told (``--rps``)."""
        if self.scenario == "told-2R":
            return f"{2 * self.rps:g}"
        return "auto" if self.scenario == "auto" else f"{self.rps:g}"


@dataclass(frozen=True)
class Goal:
    figure: str
    value: float
    text: str
    goal: str
    met: bool


@dataclass(frozen=True)
class Row:
    case: Case
    duration: float
    offered: list[float]
    admitted: list[float]
    #: Clock time (``time.time()``) of the start, and of the fall for ``halved``.
    start: float
    fall: float | None = None

    def _count(self, times: list[float], start: float, end: float) -> int:
        return sum(1 for t in times if self.start + start <= t < self.start + end)

    def admitted_rate(self, start: float = 0.0, end: float | None = None) -> float:
        end = self.duration if end is None else end
        return self._count(self.admitted, start, end) / max(end - start, 1e-9)

    def share_429(self, start: float = 0.0, end: float | None = None) -> float:
        end = self.duration if end is None else end
        offered = self._count(self.offered, start, end)
        return (offered - self._count(self.admitted, start, end)) / offered if offered else 0.0

    @property
    def requests(self) -> int:
        return self._count(self.offered, 0.0, self.duration)

    def goals(self) -> list[Goal]:
        case, r = self.case, self.case.rps
        if case.scenario in ("right", "told-2R"):
            ratio, share = self.admitted_rate() / r, self.share_429()
            return [
                Goal(
                    "admitted ÷ R", ratio, f"{ratio:.3f}", f">= {GOAL_RATIO}", ratio >= GOAL_RATIO
                ),
                Goal("429 share", share, f"{share:.2%}", f"<= {GOAL_429:.0%}", share <= GOAL_429),
            ]
        if case.scenario == "auto":
            reached = next(
                (t for t in range(5, int(self.duration) + 1)
                 if self._count(self.admitted, t - 5, t) / 5 >= AUTO_REACH * r),
                math.inf,
            )  # fmt: skip
            share = self.share_429()
            return [
                Goal(f"{AUTO_REACH} of R reached", reached, f"{reached:g} s",
                     f"<= {AUTO_WITHIN_S:g} s", reached <= AUTO_WITHIN_S),
                Goal("429 share", share, f"{share:.2%}", f"<= {AUTO_429:.0%}", share <= AUTO_429),
            ]  # fmt: skip
        assert self.fall is not None
        new, at = r / 2, self.fall - self.start
        offered = self._count(self.offered, at + UNDER_WITHIN_S, at + 2 * UNDER_WITHIN_S)
        allowed = new * UNDER_WITHIN_S + UNDER_SLACK
        after = self.admitted_rate(at + AFTER_S) / new
        share = self.share_429(at)
        return [
            Goal(f"offered {UNDER_WITHIN_S:g}-{2 * UNDER_WITHIN_S:g} s after ÷ new R",
                 offered / UNDER_WITHIN_S / new, f"{offered / UNDER_WITHIN_S / new:.3f}",
                 f"<= {allowed / UNDER_WITHIN_S / new:.2f}", offered <= allowed),
            Goal(f"admitted from {AFTER_S:g} s after ÷ new R", after, f"{after:.3f}",
                 f">= {AFTER_RATIO}", after >= AFTER_RATIO),
            Goal("429 share after the fall", share, f"{share:.2%}", "", True),
        ]  # fmt: skip


def parse_workers(text: str) -> list[int]:
    return [int(item) for item in text.split(",") if item.strip()]


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
    rps: str,
    shards: int,
    limiter: str,
    duration: float,
    work: Path,
    max_in_flight: int | None = None,
    table_rps: float | None = None,
    at_start: Callable[[float], None] | None = None,
) -> tuple[float, list[dict[str, Any]]]:
    """Run ``shards`` worker processes against ``sim`` for ``duration`` seconds, told
    ``rps`` (a figure or "auto"; ``table_rps``: the model table's figure).

    Returns the wall-clock time they started together and each worker's summary.
    ``at_start(start_at)`` is called once the start time is set.
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
            rps,
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
        if table_rps:
            command += ["--table-rps", str(table_rps)]
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
    if at_start is not None:
        at_start(start_at)
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


def run_case(
    case: Case, sim: Any, api_url: str, duration: float, work: Path, *, timeline: bool = False
) -> Row:
    """One row: the simulator enforces ``case.rps`` (halved mid-row for ``halved``).
    ``timeline``: print the row's admitted and offered rates per 5 s beside each worker's
    rate, learned limit and 429s (sampled once a second), to see where a row lost."""
    sim.reset()
    sim.configure(rps=case.rps)
    fall: list[float] = []
    timers: list[threading.Timer] = []

    def at_start(start_at: float) -> None:
        if case.scenario != "halved":
            return
        at = start_at + duration * HALVED_AT

        def halve() -> None:
            sim.configure(rps=case.rps / 2)
            fall.append(time.time())

        timers.append(threading.Timer(max(0.0, at - time.time()), halve))
        timers[-1].start()

    try:
        start_at, summaries = run_workers(
            sim,
            api_url,
            rps=case.told,
            shards=case.shards,
            limiter=case.limiter,
            duration=duration,
            work=work,
            # Room for 2R × 1 s of latency: the in-flight cap never hides the rate limit.
            max_in_flight=max(8, math.ceil(2 * case.rps / case.shards)),
            table_rps=case.rps / 4 if case.scenario == "auto" else None,
            at_start=at_start,
        )
    finally:
        for timer in timers:
            timer.cancel()
    ledger = sim.ledger()
    for summary in summaries:
        if summary.get("line"):
            print(f"    {summary['line']}", flush=True)
    if timeline:
        _print_timeline(start_at, duration, ledger, summaries)
    return Row(
        case=case,
        duration=duration,
        offered=list(ledger["offered_at"]),
        admitted=list(ledger["admitted_at"]),
        start=start_at,
        fall=fall[0] if fall else None,
    )


def _print_timeline(
    start: float, duration: float, ledger: dict[str, Any], summaries: list[dict[str, Any]]
) -> None:
    for t in range(0, int(duration), 5):
        admitted = sum(1 for x in ledger["admitted_at"] if start + t <= x < start + t + 5)
        offered = sum(1 for x in ledger["offered_at"] if start + t <= x < start + t + 5)
        states = []
        for summary in summaries:
            near = [row for row in summary.get("timeline", []) if t <= row[0] < t + 5]
            if near:
                _, rate, learned, _, throttled = near[-1]
                states.append(f"{rate}/{learned}/{throttled}")
        print(f"      {t:3d}-{t + 5:<3d} s: admitted {admitted / 5:5.2f}/s, offered "
              f"{offered / 5:5.2f}/s; rate/learned/429s {' '.join(states)}")  # fmt: skip


# -- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    parser.add_argument("--duration", type=float, default=90.0, help="seconds per row")
    parser.add_argument("--rps", type=float, default=8.0, help="the simulator's limit R")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    parser.add_argument("--workers", default="1,2,4", help="worker processes, comma-separated")
    parser.add_argument(
        "--multi", default="told-2R,auto,halved", help="scenarios also run with 2+ workers"
    )
    parser.add_argument("--limiters", default="qwbatch", help="qwbatch,prefect-1 (baseline)")
    parser.add_argument("--latency", type=float, default=0.2, help="simulator latency, s")
    parser.add_argument("--jitter", type=float, default=0.8, help="extra random latency, s")
    parser.add_argument("--prefect-api-url", help="use this Prefect server instead of one")
    parser.add_argument("--smoke", action="store_true", help="10 s a row, 1 worker, not judged")
    parser.add_argument(
        "--timeline", action="store_true", help="each row's rates per 5 s, and the workers'"
    )
    one = sub.add_parser("worker", help=argparse.SUPPRESS)
    one.add_argument("--base-url", required=True)
    one.add_argument("--rps", required=True, help="a figure or auto")
    one.add_argument("--table-rps", type=float, help="the model table's figure")
    one.add_argument("--limiter", choices=LIMITERS, required=True)
    one.add_argument("--scope", required=True)
    one.add_argument("--duration", type=float, required=True)
    one.add_argument("--out", required=True)
    one.add_argument("--prefix", required=True)
    one.add_argument("--api-key", default=KEY)
    one.add_argument("--max-in-flight", type=int, help="the cap (default: from the rate)")
    args = parser.parse_args(argv)
    if args.command == "worker":
        from bench.limits_worker import worker

        worker(args)
        return 0
    if args.smoke:
        args.duration, args.workers = 10.0, "1"

    from qwbatch.simulator import SimulatorConfig, running

    multi = set(args.multi.split(","))
    cases = [
        Case(scenario, args.rps, shards, limiter)
        for shards in parse_workers(args.workers)
        for scenario in args.scenarios.split(",")
        if shards == 1 or scenario in multi
        for limiter in args.limiters.split(",")
        if limiter == "qwbatch" or scenario in ("right", "told-2R")
    ]
    config = SimulatorConfig(
        api_key=KEY, fast=True, latency_s=args.latency, latency_jitter_s=args.jitter
    )
    rows = []
    began = time.monotonic()
    load = os.getloadavg()[0]
    with (
        nullcontext(args.prefect_api_url) if args.prefect_api_url else prefect_server() as api_url,
        running(config) as sim,
        tempfile.TemporaryDirectory() as work,
    ):
        print(
            f"simulator R={args.rps:g} req/s, latency {args.latency:g}–"
            f"{args.latency + args.jitter:g} s; {args.duration:g} s per row; Prefect at {api_url}",
            flush=True,
        )
        for case in cases:
            print(f"  {case.scenario}, {case.shards} worker(s), {case.limiter}:", flush=True)
            row = run_case(case, sim, api_url, args.duration, Path(work), timeline=args.timeline)
            rows.append(row)
            for goal in row.goals():
                print(f"    {goal.figure}: {goal.text} (goal {goal.goal or '-'})", flush=True)
    judged = args.duration >= GOAL_MIN_S
    print()
    print("| scenario | workers | limiter | told | figure | value | goal | met |")
    print("|---|---:|---|---|---|---:|---|---|")
    missed = 0
    for row in rows:
        case = row.case
        for goal in row.goals():
            met = ("yes" if goal.met else "NO") if judged and goal.goal else ""
            missed += judged and not goal.met and case.limiter == "qwbatch"
            print(
                f"| {case.scenario} | {case.shards} | {case.limiter} | {case.told} "
                f"| {goal.figure} | {goal.text} | {goal.goal} | {met} |"
            )
    print(
        f"\n{len(rows)} rows in {time.monotonic() - began:.0f} s, R={args.rps:g} req/s, "
        f"{row.requests if rows else 0} requests in the last row; load {load:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end, {os.cpu_count()} CPUs"
    )
    if not judged:
        print(f"goals not judged: rows shorter than {GOAL_MIN_S:g} s")
        return 0
    print("goals: " + ("met in every row" if not missed else f"MISSED {missed} time(s)"))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
