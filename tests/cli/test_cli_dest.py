"""DEST given wrongly: ``--out`` naming a file, ``report`` on a folder that is not a DEST.
Each fails at once with one line that says what is wrong, writes nothing, calls nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from qwbatch.cli import app

DEMO = Path(__file__).parents[2] / "manifests" / "demo.parquet"
runner = CliRunner()


@pytest.mark.parametrize("out", ["a-file.txt", "a-file.txt/below"])
def test_run_with_out_naming_a_file_says_so(tmp_path: Path, out: str) -> None:
    (tmp_path / "a-file.txt").write_text("not a folder")
    result = runner.invoke(app, ["run", str(DEMO), "--out", str(tmp_path / out), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "is a file, not a folder" in result.output
    assert "Traceback" not in result.output
    assert (tmp_path / "a-file.txt").read_text() == "not a folder"


@pytest.mark.parametrize("how", [[], ["--json"], ["--html", "page.html"]])
def test_report_on_a_folder_that_is_not_a_dest_fails_clearly(
    tmp_path: Path, how: list[str]
) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.png").write_bytes(b"not a run")
    args = [arg if arg != "page.html" else str(tmp_path / arg) for arg in how]
    result = runner.invoke(app, ["report", str(tmp_path / "photos"), *args])
    assert result.exit_code == 2, result.output
    assert "no catalog at" in result.output
    assert "is it a run's --out?" in result.output
    assert not (tmp_path / "page.html").exists()  # no empty report that looks like a run


def test_report_on_a_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "catalog.parquet").write_bytes(b"PAR1")
    result = runner.invoke(app, ["report", str(tmp_path / "catalog.parquet")])
    assert result.exit_code == 2, result.output
    assert "is a file, not a folder" in result.output
