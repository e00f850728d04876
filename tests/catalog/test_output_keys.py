"""DEST-relative output keys: a DEST moved elsewhere still reports, draws and links."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from local_run import render_all
from support import engine_settings
from typer.testing import CliRunner

from qwbatch.catalog.table import part_keys
from qwbatch.catalog.view import output_location, select_rows
from qwbatch.cli import app
from qwbatch.storage.layout import output_key
from qwbatch.storage.stores import LocalStore

cli = CliRunner()


def test_a_moved_dest_still_reports_draws_and_links(sim, tmp_path: Path) -> None:
    sim.configure(fast=True)
    rows = [{"id": f"r{i}", "prompt": f"poster {i}", "n": 1 + i % 2} for i in range(4)]
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    first = tmp_path / "first" / "dest"
    render_all(manifest, str(first), engine_settings(sim), run_id="run-1")

    con = duckdb.connect()
    con.read_parquet(f"{first}/catalog/*.parquet").create_view("cat")
    stored = con.execute(
        "select request_key, image_index, output_key from cat where status = 'succeeded'"
    ).fetchall()
    assert len(stored) == 6
    assert all(key == output_key(request, index) for request, index, key in stored)

    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(first, moved)
    store = LocalStore(moved)
    images = [row for row in select_rows(store) if row["status"] == "succeeded"]
    assert len(images) == 6
    for row in images:
        assert not Path(row["output_uri"].removeprefix("file://")).exists()  # stale: moved
        where = output_location(store, row)
        assert where is not None
        assert Path(unquote(where.removeprefix("file://"))).read_bytes()[:4] == b"\x89PNG"

    page = tmp_path / "report.html"
    result = cli.invoke(app, ["report", str(moved), "--html", str(page)])
    assert result.exit_code == 0, result.output
    html = page.read_text(encoding="utf-8")
    assert html.count('src="data:image/webp;base64,') == 6
    for href in re.findall(r'<a href="([^"]+)"', html):
        assert (page.parent / unquote(href)).resolve().is_file()
    sheet = cli.invoke(app, ["contact-sheet", str(moved), "-o", str(tmp_path / "s.png")])
    assert sheet.exit_code == 0, sheet.output
    assert "6 tiles" in sheet.output


def test_parts_written_before_the_column_resolve_the_same(sim, tmp_path: Path) -> None:
    sim.configure(fast=True)
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "a", "prompt": "a kite"}]), manifest)
    out = tmp_path / "dest"
    render_all(manifest, str(out), engine_settings(sim), run_id="run-1")
    store = LocalStore(out)
    for key in part_keys(store):  # as an older qwbatch wrote them: no output_key column
        table = pq.read_table(io.BytesIO(store.get(key))).drop_columns(["output_key"])
        pq.write_table(table, out / key)
    (row,) = [r for r in select_rows(store) if r["status"] == "succeeded"]
    assert row["output_key"] is None
    assert output_location(store, row) == store.uri(output_key(row["request_key"], 0))
