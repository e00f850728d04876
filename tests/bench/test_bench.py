"""The benchmark suite's table and registry, and the smoke version of each benchmark.

The smoke runs check what a benchmark must get right whatever the machine (a no-op rerun
makes no provider call, a plan counts what it should); their times are printed, not tested.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL

from bench.__main__ import Script, _script, table

ROOT = Path(__file__).resolve().parents[2]


def _smoke(*only: str, env: dict[str, str] | None = None) -> str:
    child = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--only", *only],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        timeout=600,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    return child.stdout


def _row(output: str, benchmark: str, figure: str) -> list[str]:
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) >= 3 and cells[0].startswith(benchmark) and cells[1] == figure:
            return cells
    raise AssertionError(f"no row {benchmark!r} / {figure!r} in:\n{output}")


def test_table_aligns_rows_and_marks_goals() -> None:
    text = table([("plan", "wall time", "3.00 s", "<= 10 s", True), ("x", "y", "z", "", None)])
    lines = text.splitlines()
    assert lines[0].split("|")[0].strip() == "benchmark"
    assert set(lines[1]) <= {"-", "+"}
    assert [c.strip() for c in lines[2].split("|")] == [
        "plan",
        "wall time",
        "3.00 s",
        "<= 10 s",
        "yes",
    ]
    assert len({line.index("|") for line in lines if "|" in line}) == 1


def test_registry_skips_a_script_that_does_not_exist() -> None:
    rows, quoted = _script("nope", Script("bench_does_not_exist"), smoke=True)
    assert rows == [("nope", "skipped", "bench/bench_does_not_exist.py is absent", "", None)]
    assert quoted == []


@pytest.mark.slow
def test_plan_smoke_counts_dedup_and_shards() -> None:
    output = _smoke("plan")
    # 20,000 rows, every other one already in the catalog, 250 requests a shard.
    cells = _row(output, "plan (20,000 rows", "deduplicated / to render / shards")
    assert cells[2] == "10,000 / 10,000 / 40"
    assert _row(output, "plan (20,000 rows", "peak RSS")[2].endswith("MiB")
    # Each shape, both commands, as whole processes.
    for shape in ("DuckDB, all new", "polars, all new", "half new vs catalog"):
        for command in ("dry-run", "estimate"):
            name = f"plan shape: {shape}"
            cells = [c for c in output.splitlines() if c.startswith(name) and command in c]
            assert any("peak RSS summed" in c for c in cells), (shape, command)


@pytest.mark.slow
def test_overhead_smoke_reruns_without_a_provider_call(prefect_server) -> None:
    # On the session's Prefect server: a temporary one would add its start (~10 s), which is
    # the "Prefect warm-up" figure a full run measures, not something a smoke shows.
    output = _smoke("overhead", env={"PREFECT_API_URL": str(PREFECT_API_URL.value())})
    assert _row(output, "no-op rerun", "provider calls")[2:5] == ["0", "0", "yes"]
    assert "qwbatch ÷ floor img/s" in output


@pytest.mark.slow
def test_limits_smoke_prints_every_scenario() -> None:
    # bench_limits in the registry's smoke form: R=8, one worker, 3 s a row, its own Prefect
    # server; a row per scenario and goal in one table (too short to judge the goals).
    output = _smoke("limits")
    assert _row(output, "limits", "exit status")[2:5] == ["0", "0", "yes"]
    rows = [line.split("|") for line in output.splitlines() if line.startswith("[limits] | ")]
    assert {row[1].strip() for row in rows} >= {"right", "told-2R", "auto", "halved"}
    assert {row[4].strip() for row in rows if row[1].strip() == "auto"} == {"auto"}  # told


@pytest.mark.slow
def test_text_smoke_judges_and_runs_with_text_checks(prefect_server) -> None:
    # 12 images judged, and a 24-row run with text checks at R=4 against the simulator. The
    # run uses the session's Prefect server: a temporary one would add its start (6-10 s).
    output = _smoke("text", env={"PREFECT_API_URL": str(PREFECT_API_URL.value())})
    assert _row(output, "text judge (12 images)", "misspelt images passed")[2] == "0"
    assert _row(output, "text run (24 rows)", "admitted ÷ R")[2]


@pytest.mark.slow
def test_export_smoke_prints_throughput_and_memory() -> None:
    output = _smoke("export")
    assert "img/s" in _row(output, "export webdataset (2,000 images)", "throughput")[2]
    memory = _row(output, "export webdataset (2,000 images)", "peak RSS (500 → 2,000 images)")
    assert memory[2].endswith("MiB")
