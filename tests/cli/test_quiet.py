"""``qwbatch run --quiet`` prints the summary and errors, not each retry of a 5xx."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL

from bench.bench_kill import child_env, write_manifest


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quiet_silences_retry_warnings(prefect_server, sim, tmp_path: Path) -> None:
    sim.configure(fast=True, error_5xx_rate=0.5, seed=7)
    env = child_env(sim.base_url, sim.api_key, str(PREFECT_API_URL.value()), tmp_path)
    manifest = write_manifest(tmp_path / "m.parquet", 12)

    said = {}
    for quiet in (False, True):
        out = tmp_path / f"out-{quiet}"
        args = [sys.executable, "-m", "qwbatch.cli", "run", str(manifest), "--out", str(out)]
        run = subprocess.run(
            [*args, *(["--quiet"] if quiet else [])], env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stdout + run.stderr
        said[quiet] = run.stderr
        sim.reset()
        sim.configure(fast=True, error_5xx_rate=0.5, seed=7)
    assert "retry" in said[False].lower()  # the loud run did retry, and said so
    assert "retry" not in said[True].lower(), said[True]
    assert said[True].strip() == ""
