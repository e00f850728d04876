"""``qwbatch limits`` and the status lines ``qwbatch run`` prints while it renders."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from qwbatch.cli import app

runner = CliRunner()


def test_limits_shows_each_model_its_sources_and_that_it_is_local(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QWBATCH_SHARED_LIMITS", "off")
    monkeypatch.setenv("QWBATCH_RPS", "1.5")
    monkeypatch.setenv("QWBATCH_MODEL_LIMITS", '{"qwen-image-max": {"max_in_flight": 1}}')
    result = runner.invoke(app, ["limits", "-m", "qwen-image-2.0", "-m", "qwen-image-max"])
    assert result.exit_code == 0, result.output
    assert "limits are local to each process: shared_limits is off" in result.output
    assert "qwen-image-2.0: 1.5 req/s (run setting), 4 in flight (model table)" in result.output
    assert "qwen-image-max: 1.5 req/s (run setting), 1 in flight (model setting)" in result.output


def test_limits_json_and_unknown_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWBATCH_SHARED_LIMITS", "off")
    result = runner.invoke(app, ["limits", "--json", "-m", "qwen-image-2.0-pro"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    [row] = data["models"]
    assert (row["model"], row["rps"], row["rps_from"], row["shared"]) == (
        "qwen-image-2.0-pro",
        1.0,
        "model table",
        False,
    )
    unknown = runner.invoke(app, ["limits", "-m", "qwen-image-9"])
    assert unknown.exit_code == 2
    assert "unknown model(s): qwen-image-9" in unknown.output


def test_limits_reads_what_the_prefect_server_holds(
    prefect_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QWBATCH_LIMIT_SCOPE", "cli-limits-test")
    result = runner.invoke(app, ["limits", "-m", "qwen-image-2.0"])
    assert result.exit_code == 0, result.output
    assert "shared through the Prefect server" in result.output
    assert "no limits yet (the first run creates them)" in result.output


@pytest.mark.slow
@pytest.mark.usefixtures("sim_env")
def test_run_prints_a_status_line_per_model(
    prefect_server, sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QWBATCH_LIMIT_SCOPE", f"cli-run-{tmp_path.name}")
    path = tmp_path / "m.parquet"
    pq.write_table(
        pa.table({"id": ["a", "b"], "prompt": ["a cat", "a dog"], "size": ["512*512"] * 2}), path
    )
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "out"), "--rps", "20"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("limits ")]
    assert lines, result.output
    assert lines[-1].startswith("limits qwen-image-2.0: ")
    assert "limit" in lines[-1]
    assert "in flight" in lines[-1]
    assert "429s 0/min" in lines[-1]
    assert "shared via Prefect limit" in lines[-1]
