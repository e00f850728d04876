"""Kill test: SIGKILL a real ``qwbatch run`` at random moments, resume it, count the bills.

A manifest of 500 requests (half ``qwen-image-plus`` on the async task endpoint, half
``qwen-image-2.0`` on the sync endpoint) is rendered by ``python -m qwbatch.cli run`` in a
child process against the simulator. Once it is rendering, the child is SIGKILLed after a
random delay; this happens three times, each new child resuming the run (automatically, or
with ``--resume``), and a last child finishes it. Then, from the simulator's billing ledger
and the store:

- every manifest row has exactly one terminal row in the catalog;
- every stored image has a catalog row;
- async endpoint: billed ÷ distinct requests (goal: exactly 1.0);
- sync endpoint: extra billing is at most the calls the journal showed unanswered at each kill,
  and at most what the run reported as possible extra spend.

Run it on its own (it starts a simulator and a Prefect test server)::

    .venv/bin/python bench/bench_kill.py             # 500 requests, 3 kills
    .venv/bin/python bench/bench_kill.py --rows 200 --kills 5 --seed 7

``tests/render/test_kill.py`` runs the same scenario under pytest with assertions.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
ASYNC_MODEL, SYNC_MODEL = "qwen-image-plus", "qwen-image-2.0"
TERMINAL = {"succeeded", "failed", "moderated", "deduplicated", "ambiguous", "expired"}
RUN_ID = "kill-test"


@dataclass(slots=True)
class KillReport:
    """What the kills left and what the ledger says. Ratios are billed ÷ distinct."""

    rows: int
    kills: list[float] = field(default_factory=list)  # seconds after rendering began
    unanswered_sync: list[int] = field(default_factory=list)  # per kill, from the journal
    unanswered_async: list[int] = field(default_factory=list)
    async_billed: int = 0
    async_distinct: int = 0
    sync_billed: int = 0
    sync_distinct: int = 0
    reported_extra_images: int = 0
    recovered_tasks: int = 0
    catalog_rows: int = 0
    rows_with_one_outcome: int = 0
    objects_without_row: int = 0
    final_exit_code: int | None = None
    final_summary: str = ""
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """The checks: one outcome a row, every image a row, no async request billed twice,
        sync extra billing within the calls the kills cut and within what was reported."""
        extra = self.sync_billed - self.sync_distinct
        return (
            self.rows_with_one_outcome == self.rows
            and self.objects_without_row == 0
            and self.async_billed == self.async_distinct
            and extra <= sum(self.unanswered_sync)
            and extra <= self.reported_extra_images
        )

    @property
    def async_ratio(self) -> float:
        return self.async_billed / self.async_distinct if self.async_distinct else 0.0

    @property
    def sync_ratio(self) -> float:
        return self.sync_billed / self.sync_distinct if self.sync_distinct else 0.0

    def lines(self) -> list[str]:
        kills = ", ".join(f"{t:.2f}" for t in self.kills)
        extra = self.sync_billed - self.sync_distinct
        return [
            f"{self.rows} requests, {len(self.kills)} SIGKILLs at {kills} s into rendering",
            f"unanswered calls in the journal at each kill: sync {self.unanswered_sync}, "
            f"async {self.unanswered_async}",
            f"async endpoint ({ASYNC_MODEL}): billed {self.async_billed} ÷ distinct "
            f"{self.async_distinct} = {self.async_ratio:.4f}",
            f"sync endpoint ({SYNC_MODEL}): billed {self.sync_billed} ÷ distinct "
            f"{self.sync_distinct} = {self.sync_ratio:.4f} (extra {extra}, bound "
            f"{sum(self.unanswered_sync)}, reported possible {self.reported_extra_images})",
            f"lost async submissions found again: {self.recovered_tasks}",
            f"statuses: {self.statuses}",
            f"catalog: {self.catalog_rows} rows; {self.rows_with_one_outcome} of {self.rows} "
            f"manifest rows with exactly one terminal outcome; "
            f"{self.objects_without_row} stored images without a row",
        ]


def write_manifest(path: Path, rows: int) -> Path:
    pq.write_table(
        pa.table(
            {
                "id": [f"row-{i:04d}" for i in range(rows)],
                "prompt": [f"kill test {i}: a harbour at dawn, oil painting" for i in range(rows)],
                "model": [ASYNC_MODEL if i % 2 else SYNC_MODEL for i in range(rows)],
                "size": ["1328*1328" if i % 2 else "512*512" for i in range(rows)],
            }
        ),
        path,
    )
    return path


def child_env(base_url: str, api_key: str, prefect_api_url: str, home: Path) -> dict[str, str]:
    """The child's environment: the simulator, fast retries, the shared Prefect server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QWBATCH_", "PREFECT_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        DASHSCOPE_API_KEY=api_key,
        QWBATCH_DASHSCOPE_BASE_URL=base_url,
        QWBATCH_BACKOFF_BASE_S="0.02",
        QWBATCH_BACKOFF_MAX_S="0.2",
        QWBATCH_POLL_INTERVAL_S="0.05",
        QWBATCH_POLL_MAX_INTERVAL_S="0.2",
        QWBATCH_RPS="200",
        QWBATCH_MAX_IN_FLIGHT="8",
        PREFECT_API_URL=prefect_api_url,
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    return env


def _images(out: Path) -> int:
    folder = out / "images"
    return sum(1 for p in folder.rglob("*.png")) if folder.exists() else 0


def _run_args(manifest: Path, out: Path, attempt: int) -> list[str]:
    args = [
        sys.executable,
        "-m",
        "qwbatch.cli",
        "run",
        str(manifest),
        "--out",
        str(out),
        "--shard-size",
        "100",
    ]
    # The first child names the run; later ones resume it by name or find it on their own.
    if attempt == 0:
        args += ["--run-id", RUN_ID]
    elif attempt % 2 == 0:
        args += ["--resume", RUN_ID]
    return args


def kill_and_resume(
    manifest: Path,
    out: Path,
    env: dict[str, str],
    *,
    kills: int,
    rng: random.Random,
    max_delay_s: float | None = None,
    child_timeout_s: float = 180.0,
) -> KillReport:
    """Start, SIGKILL after a random delay once rendering is under way, ``kills`` times;
    then let a last child finish. Returns the report, without the ledger's half.

    The delay is uniform up to ``max_delay_s`` (default: scaled to the manifest, 2 s for
    500 rows). A child that finishes before its kill ends the loop: nothing is left.
    """
    from qwbatch.render.journal import read_run_journal
    from qwbatch.storage.stores import LocalStore

    rows = pq.read_metadata(manifest).num_rows
    report = KillReport(rows=rows)
    max_delay_s = max_delay_s or min(2.5, max(0.3, rows / 250))
    store = LocalStore(out)
    seen: set[tuple[str, float]] = set()
    for attempt in range(kills + 1):
        before = _images(out)
        child = subprocess.Popen(
            _run_args(manifest, out, attempt),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if attempt == kills:
            output, _ = child.communicate(timeout=child_timeout_s)
            report.final_exit_code = child.returncode
            report.final_summary = output
            break
        deadline = time.monotonic() + child_timeout_s
        while _images(out) == before and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        began = time.monotonic()
        time.sleep(rng.uniform(0.1, max_delay_s))
        if child.poll() is not None:
            output, _ = child.communicate()
            report.final_exit_code, report.final_summary = child.returncode, output
            break
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
        report.kills.append(time.monotonic() - began)
        # Calls this child sent whose answer it never journaled: what the kill cut off.
        cut = {
            (key, call.sent_at): call.endpoint
            for state in read_run_journal(store, RUN_ID).values()
            for key, call in state.in_flight().items()
        }
        new = [endpoint for call, endpoint in cut.items() if call not in seen]
        seen.update(cut)
        report.unanswered_sync.append(new.count("sync"))
        report.unanswered_async.append(new.count("async"))
    return report


def account(report: KillReport, out: Path, ledger: dict) -> KillReport:
    """Fill in the ledger's and the catalog's half of the report."""
    import json

    from qwbatch.catalog.table import read_catalog
    from qwbatch.storage.stores import LocalStore

    store = LocalStore(out)
    rows = [r for r in read_catalog(store).to_pylist() if r["run_id"] == RUN_ID]
    report.catalog_rows = len(rows)
    report.statuses = dict(Counter(r["status"] for r in rows))
    outcomes = Counter(r["row_id"] for r in rows if r["status"] in TERMINAL)
    report.rows_with_one_outcome = sum(1 for count in outcomes.values() if count == 1)
    named = {r["output_uri"] for r in rows if r["output_uri"]}
    report.objects_without_row = sum(
        1 for key in store.list("images/") if key.endswith(".png") and store.uri(key) not in named
    )
    for model, prefix in ((ASYNC_MODEL, "async"), (SYNC_MODEL, "sync")):
        billed = Counter(
            (e["prompt_sha256"], e["seed"]) for e in ledger["entries"] if e["model"] == model
        )
        setattr(report, f"{prefix}_billed", sum(billed.values()))
        setattr(report, f"{prefix}_distinct", len(billed))
    summary = json.loads(store.get(f"runs/{RUN_ID}/summary.json"))
    report.reported_extra_images = summary["possible_extra_images"]
    report.recovered_tasks = summary["recovered_tasks"]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)

    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from qwbatch.simulator import SimulatorConfig, running

    # A SIGKILLed child leaves half-sent requests: the simulator's server logs each one as an
    # ASGI error. They are the point of the exercise, not a fault; keep the report readable.
    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
    key = "sk-bench-kill"
    config = SimulatorConfig(
        api_key=key, rps=1000, fast=True, latency_s=0.3, latency_jitter_s=0.2, seed=seed
    )
    with tempfile.TemporaryDirectory() as tmp, running(config) as sim:
        home = Path(tmp) / "prefect"
        home.mkdir()
        os.environ["PREFECT_HOME"] = str(home)
        os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        with prefect_test_harness(server_startup_timeout=120):
            env = child_env(sim.base_url, key, str(PREFECT_API_URL.value()), home)
            manifest = write_manifest(Path(tmp) / "kill.parquet", args.rows)
            out = Path(tmp) / "out"
            began = time.monotonic()
            report = kill_and_resume(manifest, out, env, kills=args.kills, rng=random.Random(seed))
            account(report, out, sim.ledger())
    print(
        f"seed {seed}; wall {time.monotonic() - began:.1f} s; final exit code "
        f"{report.final_exit_code}"
    )
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
