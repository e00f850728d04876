"""The nightly digest: rows new / changed / unchanged against earlier runs, spend, failures."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from local_run import render_all
from support import engine_settings

from qwbatch.report.digest import digest, digest_markdown
from qwbatch.storage.stores import LocalStore


def manifest(path: Path, prompts: dict[str, str]) -> Path:
    rows = [{"id": row_id, "prompt": prompt} for row_id, prompt in prompts.items()]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture
def nights(sim, tmp_path: Path) -> Path:
    """Night one renders a, b, c; night two keeps a, changes b, drops c, adds d and a row the
    provider refuses (moderation)."""
    sim.configure(fast=True)
    settings = engine_settings(sim)
    out = tmp_path / "out"
    one = {"a": "a red lantern", "b": "a blue kite", "c": "a green tea cup"}
    render_all(manifest(tmp_path / "1.parquet", one), str(out), settings, run_id="night-1")
    two = {"a": "a red lantern", "b": "a blue kite at dusk", "d": "a paper boat"}
    two["x"] = "__moderate__ a forbidden poster"
    render_all(
        manifest(tmp_path / "2.parquet", two),
        str(out),
        settings,
        run_id="night-2",
        auto_resume=False,
    )
    return out


def test_digest_counts_rows_against_earlier_runs_and_lists_failures(nights: Path) -> None:
    found = digest(LocalStore(nights), "night-2")
    assert (found.new, found.changed, found.unchanged) == (2, 1, 1)  # d and x; b; a
    ((failed),) = found.failures
    assert (failed.row_id, failed.status) == ("x", "moderated")
    con = duckdb.connect()
    con.read_parquet(f"{nights}/catalog/*.parquet").create_view("cat")
    spent = con.execute("select sum(cost) from cat where run_id = 'night-2'").fetchone()
    assert found.spend is not None
    assert round(found.spend.run_cost["USD"], 6) == round(spent[0], 6)

    text = digest_markdown(found)
    assert "Rows: **2 new**, **1 changed**, 1 unchanged." in text
    assert f"run night-2 spent {spent[0]:.4f} USD" in text
    assert "| `x` | moderated | `" in text
    assert digest(LocalStore(nights), "night-1").new == 3
    assert "Nothing failed." in digest_markdown(digest(LocalStore(nights), "night-1"))
