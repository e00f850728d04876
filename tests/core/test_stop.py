"""Clean stop: SIGINT or SIGTERM to a real ``qwbatch run`` stops scheduling, lets calls under
way finish (none is cut, so none may be paid twice), writes the catalog parts, exits with the
signal's code and one line of what is left; the next run finishes the rest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from prefect.settings import PREFECT_API_URL
from support import KEY

from bench.bench_kill import RUN_ID, child_env, write_manifest
from qwbatch.catalog.table import read_catalog
from qwbatch.render.journal import read_run_journal
from qwbatch.storage.stores import LocalStore

ROWS = 80


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigterm_stops_the_cli_run_cleanly_and_a_rerun_finishes_it(
    prefect_server, sim, tmp_path
) -> None:
    signum = signal.SIGTERM  # the one Prefect also handles: ours must win during the run
    sim.configure(fast=True, latency_s=0.4)
    env = child_env(sim.base_url, KEY, str(PREFECT_API_URL.value()), tmp_path)
    manifest = write_manifest(tmp_path / "m.parquet", ROWS)
    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "qwbatch.cli",
        "run",
        str(manifest),
        "--out",
        str(out),
        "--run-id",
        RUN_ID,
        "--shard-size",
        "40",
    ]
    child = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    while not (out / "images").exists() and child.poll() is None:
        time.sleep(0.02)
    time.sleep(0.5)
    child.send_signal(signum)
    stdout, stderr = child.communicate(timeout=120)

    assert child.returncode == 128 + signum, stdout + stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"qwbatch: stopped by {signum.name}: "), stderr
    left = int(last.split(": ")[2].split(" of ")[0])
    assert 0 < left < ROWS
    assert f"--resume {RUN_ID}" in last
    store = LocalStore(out)
    # Nothing was cut mid-call, and every finished request is in the catalog already.
    assert all(not s.in_flight() for s in read_run_journal(store, RUN_ID).values())
    assert read_catalog(store).num_rows == ROWS - left

    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    rows = read_catalog(store).to_pylist()
    assert sorted(r["row_id"] for r in rows) == sorted(f"row-{i:04d}" for i in range(ROWS))
    assert {r["status"] for r in rows} == {"succeeded"}
    billed = Counter(e["prompt_sha256"] for e in sim.ledger()["entries"])
    assert len(billed) == ROWS
    assert set(billed.values()) == {1}  # a clean stop pays for nothing twice, sync included


@pytest.mark.slow
@pytest.mark.usefixtures("sim_env")
def test_ctrl_c_stops_the_flow_and_restores_the_handlers(
    prefect_server, sim, tmp_path, monkeypatch
) -> None:
    from flows.render import render_manifest

    sim.configure(fast=True, latency_s=0.3)
    monkeypatch.setenv("QWBATCH_POLL_INTERVAL_S", "0.05")
    # Not the model table's 1-2 requests per second (the resume alone took ~20 s at those):
    # four calls in flight per model still leave most rows to do when Ctrl-C comes.
    monkeypatch.setenv("QWBATCH_RPS", "200")
    monkeypatch.setenv("QWBATCH_MAX_IN_FLIGHT", "4")
    manifest = write_manifest(tmp_path / "m.parquet", 60)
    out = tmp_path / "out"
    before = signal.getsignal(signal.SIGINT)
    # Ctrl-C, as the terminal sends it: SIGINT to this process, once rendering is under way.
    ctrl_c = threading.Thread(target=_interrupt_when_rendering, args=(out,))
    ctrl_c.start()
    summary = render_manifest(manifest=str(manifest), out=str(out), shard_size=20)
    ctrl_c.join()
    assert summary.stopped_by == "SIGINT"
    assert 0 < summary.left < 60
    assert signal.getsignal(signal.SIGINT) is before
    again = render_manifest(manifest=str(manifest), out=str(out), shard_size=20)
    assert (again.run_id, again.resumed, again.left) == (summary.run_id, True, 0)
    assert read_catalog(LocalStore(out)).num_rows == 60
    billed = Counter(e["prompt_sha256"] for e in sim.ledger()["entries"])
    assert sorted(billed.values()) == [1] * 60


def _interrupt_when_rendering(out) -> None:
    deadline = time.monotonic() + 120
    while not (out / "images").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    os.kill(os.getpid(), signal.SIGINT)
