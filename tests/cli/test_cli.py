"""The ``qwbatch`` command: each command's behaviour, exit codes, and its place in the README."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from qwbatch.cli import app

ROOT = Path(__file__).parents[2]
DEMO = ROOT / "manifests" / "demo.parquet"
runner = CliRunner()


def test_every_command_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    names = sorted(
        (command.name or command.callback.__name__).replace("_", "-")  # type: ignore[union-attr]
        for command in app.registered_commands
    )
    groups = sorted(group.name for group in app.registered_groups if group.name)
    subcommands = sorted(
        f"{group.name} {(command.name or command.callback.__name__).replace('_', '-')}"  # type: ignore[union-attr]
        for group in app.registered_groups
        for command in group.typer_instance.registered_commands  # type: ignore[union-attr]
    )
    assert names
    for name in names + groups + subcommands:
        assert re.search(rf"`qwbatch {re.escape(name)}\b", readme), f"README lacks qwbatch {name}"


def test_validate_reports_each_reject_and_exits_1() -> None:
    result = runner.invoke(app, ["validate", str(DEMO), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["rejected"] == 1
    assert report["valid"] == pq.read_table(DEMO).num_rows - 1
    (reject,) = report["rejects"]
    assert reject["id"] == "too-big"
    assert reject["column"] == "size"


def test_validate_writes_rejects_file(tmp_path: Path) -> None:
    out = tmp_path / "rejects.parquet"
    result = runner.invoke(app, ["validate", str(DEMO), "--rejects", str(out)])
    assert result.exit_code == 1
    assert "1 rejected" in result.output
    assert pq.read_table(out).column("id").to_pylist() == ["too-big"]


def test_validate_clean_manifest_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "prompt": ["a cat", "a dog"]}), path)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "2 valid rows, 0 rejected" in result.output


def test_unreadable_manifest_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    path.write_bytes(b"not parquet")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "qwbatch:" in result.output


@pytest.mark.slow
@pytest.mark.usefixtures("sim_env")
def test_run_renders_and_strict_refuses(prefect_server, sim, tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    pq.write_table(
        pa.table(
            {
                "id": ["a", "b", "bad"],
                "prompt": ["a cat", "a dog", ""],
                "size": ["512*512", "512*512", None],
            }
        ),
        path,
    )
    out = tmp_path / "out"
    strict = runner.invoke(app, ["run", str(path), "--out", str(out), "--strict"])
    assert strict.exit_code == 2
    assert "bad" in strict.output
    assert sim.ledger()["billed_images"] == 0

    result = runner.invoke(app, ["run", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "1 rejected" in result.output
    assert sim.ledger()["billed_images"] == 2


_RUN_AND_SAY_IF_PREFECT = """
import sys
from qwbatch.cli import app
try:
    app(sys.argv[1:])
except SystemExit as exc:
    print("exit", exc.code, "prefect imported:", "prefect" in sys.modules)
"""


@pytest.mark.slow
@pytest.mark.usefixtures("sim_env")
def test_a_rerun_with_nothing_new_finishes_without_prefect(
    prefect_server, sim, tmp_path: Path
) -> None:
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "prompt": ["a cat", "a dog"]}), path)
    out = tmp_path / "out"
    first = runner.invoke(app, ["run", str(path), "--out", str(out), "--quiet"])
    assert first.exit_code == 0, first.output
    calls = sum(sim.ledger()["requests"].values())

    rerun = subprocess.run(
        [sys.executable, "-c", _RUN_AND_SAY_IF_PREFECT, "run", str(path), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert "exit 0 prefect imported: False" in rerun.stdout, rerun.stdout + rerun.stderr
    assert "2 already rendered" in rerun.stdout or "deduplicated" in rerun.stdout, rerun.stdout
    assert sum(sim.ledger()["requests"].values()) == calls  # not one provider call


def test_run_takes_a_figure_or_auto_for_rps(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(DEMO), "--out", str(tmp_path), "--rps", "fast"])
    assert result.exit_code == 2
    assert "neither a positive number nor 'auto'" in result.output
    for good in ("auto", "2.5"):
        dry = ["run", str(DEMO), "--out", str(tmp_path), "--rps", good, "--dry-run"]
        assert runner.invoke(app, dry).exit_code in (0, 1)  # the demo has rejects


def test_simulator_command_takes_the_simulator_modules_flags() -> None:
    from qwbatch.simulator.__main__ import build_parser

    shown = runner.invoke(app, ["simulator", "--help"])
    assert shown.exit_code == 0, shown.output
    assert "usage: qwbatch simulator" in shown.output
    flags = [flag for action in build_parser()._actions for flag in action.option_strings]
    assert {"--rps", "--no-rate-limit", "--set", "--seed", "--api-key"} <= set(flags)
    for flag in flags:
        assert flag in shown.output
    # Knobs reach the simulator's own checks (a rate above 1 is refused before serving).
    refused = runner.invoke(app, ["simulator", "--port", "0", "--set", "error_5xx_rate=2"])
    assert refused.exit_code == 2
    assert "error_5xx_rate" in refused.output


def test_estimate_prints_the_largest_tag_lines_and_counts_the_rest(tmp_path: Path) -> None:
    # An id as a tag gives a tag line per row: the table shows the largest, --json has all.
    manifest = tmp_path / "tagged.parquet"
    rows = 14
    pq.write_table(
        pa.table(
            {
                "id": [f"r{i}" for i in range(rows)],
                "prompt": [f"a lamp, variant {i}" for i in range(rows)],
                "n": pa.array([2 if i == 5 else 1 for i in range(rows)], pa.int32()),
                "tags": pa.array(
                    [[("sku", f"{i:02d}")] for i in range(rows)],
                    pa.map_(pa.string(), pa.string()),
                ),
            }
        ),
        manifest,
    )
    result = runner.invoke(app, ["estimate", str(manifest)])
    assert result.exit_code == 0, result.output
    assert "largest 10, 4 more in --json" in result.output
    shown = re.findall(r"sku=(\d\d)", result.output)
    assert shown == ["05", "00", "01", "02", "03", "04", "06", "07", "08", "09"]
    figures = json.loads(runner.invoke(app, ["estimate", str(manifest), "--json"]).output)
    assert len(figures["by_tag"]) == rows


_RUN_AND_SAY_WHAT_IS_IMPORTED = """
import sys
from qwbatch.cli import app
try:
    app(sys.argv[1:])
except SystemExit as exc:
    heavy = [name for name in ("prefect", "aiohttp", "boto3") if name in sys.modules]
    print("exit", exc.code, "imported:", ",".join(heavy) or "none")
"""


@pytest.mark.parametrize("command", ["estimate", "dry-run"])
def test_estimate_and_dry_run_import_neither_prefect_nor_the_providers(
    tmp_path: Path, command: str
) -> None:
    # Whole processes pay for every import: planning needs no Prefect, no provider (aiohttp)
    # and, on a local DEST, no boto3.
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "prompt": ["a cat", "a dog"]}), manifest)
    args = ["estimate", str(manifest)]
    if command == "dry-run":
        args = ["run", str(manifest), "--out", str(tmp_path / "out"), "--dry-run"]
    child = subprocess.run(
        [sys.executable, "-c", _RUN_AND_SAY_WHAT_IS_IMPORTED, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert child.stdout.strip().splitlines()[-1] == "exit 0 imported: none", child.stderr
