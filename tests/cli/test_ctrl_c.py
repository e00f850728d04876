"""Ctrl-C like a person: a real ``qwbatch run`` in a process group of its own (as a terminal
runs a job), with Prefect's temporary server (no PREFECT_API_URL), signalled the way a
terminal signals: the whole group. It stops within 10 s with the journal intact and the
resume line, exits 128 + the signal; the resume bills each image once. A second Ctrl-C
ends it at once, the journal still readable and the server child gone. (The resumes run on
the session's Prefect server: the signalled run is where the temporary server matters, and
starting another would add its 6-10 s to each test.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL

from bench.bench_kill import RUN_ID, child_env, write_manifest
from qwbatch.catalog.table import read_catalog
from qwbatch.render.journal import read_run_journal
from qwbatch.storage.stores import LocalStore

ROWS = 40


def _ephemeral_env(sim, home: Path) -> dict[str, str]:
    env = child_env(sim.base_url, sim.api_key, "", home)
    del env["PREFECT_API_URL"]  # Prefect's temporary server: the case a terminal user meets
    return env


def _resume_env(sim, home: Path) -> dict[str, str]:
    """The resume's environment: the session's Prefect server (the fixture ``prefect_server``)."""
    return child_env(sim.base_url, sim.api_key, str(PREFECT_API_URL.value()), home)


def _args(manifest: Path, out: Path) -> list[str]:
    return [
        *(sys.executable, "-m", "qwbatch.cli", "run", str(manifest), "--out", str(out)),
        *("--run-id", RUN_ID, "--shard-size", "20"),
    ]


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        state = (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split() or ["?"])[0]
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def _start_and_wait_for_images(
    manifest: Path, out: Path, env: dict[str, str]
) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        _args(manifest, out),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, like a terminal's job
    )
    deadline = time.monotonic() + 240
    while not (out / "images").exists() and child.poll() is None:
        assert time.monotonic() < deadline, "the run rendered nothing in 240 s"
        time.sleep(0.02)
    time.sleep(0.5)
    return child


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_group_stops_cleanly_and_the_resume_bills_once(
    prefect_server, sim, tmp_path: Path, signum: signal.Signals
) -> None:
    sim.configure(fast=True, latency_s=0.4)
    env = _ephemeral_env(sim, tmp_path)
    manifest = write_manifest(tmp_path / "m.parquet", ROWS)
    out = tmp_path / "out"
    child = _start_and_wait_for_images(manifest, out, env)
    server = _children(child.pid)

    os.killpg(child.pid, signum)
    began = time.monotonic()
    stdout, stderr = child.communicate(timeout=60)
    took = time.monotonic() - began

    print(f"\ngroup {signum.name}: stopped in {took:.1f} s, exit {child.returncode}")
    assert child.returncode == 128 + signum, stdout + stderr
    assert took < 10, f"stopped in {took:.1f} s"
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"qwbatch: stopped by {signum.name}: "), stderr
    assert f"--resume {RUN_ID}" in last
    left = int(last.split(": ")[2].split(" of ")[0])
    assert 0 < left < ROWS
    assert all(_gone(pid, 5) for pid in server), "Prefect's server outlived the run"
    store = LocalStore(out)
    assert all(not s.in_flight() for s in read_run_journal(store, RUN_ID).values())
    assert read_catalog(store).num_rows == ROWS - left

    rerun = subprocess.run(
        _args(manifest, out), env=_resume_env(sim, tmp_path), capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    rows = read_catalog(store).to_pylist()
    assert sorted(r["row_id"] for r in rows) == [f"row-{i:04d}" for i in range(ROWS)]
    billed = Counter(e["prompt_sha256"] for e in sim.ledger()["entries"])
    assert len(billed) == ROWS
    assert set(billed.values()) == {1}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_second_ctrl_c_ends_the_run_at_once_and_keeps_the_journal(
    prefect_server, sim, tmp_path: Path
) -> None:
    sim.configure(fast=True, latency_s=0.4)
    env = _ephemeral_env(sim, tmp_path)
    manifest = write_manifest(tmp_path / "m.parquet", ROWS)
    out = tmp_path / "out"
    child = _start_and_wait_for_images(manifest, out, env)
    server = _children(child.pid)
    assert server, "no Prefect server child"

    os.killpg(child.pid, signal.SIGINT)
    time.sleep(0.1)
    os.killpg(child.pid, signal.SIGINT)
    began = time.monotonic()
    stdout, stderr = child.communicate(timeout=60)
    took = time.monotonic() - began

    print(f"\nsecond SIGINT: ended in {took:.1f} s, exit {child.returncode}")
    assert child.returncode == 130, stdout + stderr
    assert took < 2, f"ended in {took:.1f} s"
    assert f"stopped at once by a second SIGINT; finish with qwbatch run {manifest}" in stderr
    assert f"--resume {RUN_ID}" in stderr
    assert all(_gone(pid, 5) for pid in server), "Prefect's server outlived the run"
    # The journal reads back whole; calls cut on the wire are the only unknowns.
    cut = sum(len(s.in_flight()) for s in read_run_journal(LocalStore(out), RUN_ID).values())

    rerun = subprocess.run(
        _args(manifest, out), env=_resume_env(sim, tmp_path), capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    rows = read_catalog(LocalStore(out)).to_pylist()
    assert {r["row_id"] for r in rows} == {f"row-{i:04d}" for i in range(ROWS)}
    billed = Counter(e["prompt_sha256"] for e in sim.ledger()["entries"])
    assert len(billed) == ROWS
    assert sum(billed.values()) - ROWS <= cut  # paid twice only where a call was cut
