"""``qwbatch text-check DEST``: an existing catalog's images read again; nothing is paid for."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import render_helpers
from PIL import Image
from typer.testing import CliRunner

from qwbatch.catalog.table import read_catalog
from qwbatch.cli import app
from qwbatch.core.types import PlanItem
from qwbatch.report.html import render_html_report
from qwbatch.report.numbers import report
from qwbatch.storage.stores import open_store

PHRASES = {"p-0": "Fresh Bread", "p-1": "灯笼夜市", "p-2": "Open Late", "p-3": "秋季新品"}


def _misspelt(uri: str) -> bool:
    data = Path(uri.removeprefix("file://")).read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        return "qwbatch-simulator-misspelt" in image.info


def test_text_check_reads_old_rows_and_pays_nothing(sim, tmp_path: Path) -> None:
    settings = render_helpers.engine_settings(sim)
    sim.configure(misspell_rate=0.5, seed=4)
    # Rendered before text checks: the rows carry no expected text, nothing was read.
    items = [
        PlanItem(render_helpers.make_request(row, f"A sign that says “{text}”", seed=7))
        for row, text in PHRASES.items()
    ]
    out = tmp_path / "out"
    render_helpers.render(items, settings, out)
    billed = sim.ledger()["billed_images"]
    assert billed == len(PHRASES)

    manifest = tmp_path / "m.parquet"
    pq.write_table(
        pa.table(
            {"id": list(PHRASES), "prompt": ["x"] * 4, "expected_text": list(PHRASES.values())}
        ),
        manifest,
    )
    result = CliRunner().invoke(
        app, ["text-check", str(out), "--manifest", str(manifest), "--workers", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "4 images read" in result.output
    assert sim.ledger()["billed_images"] == billed  # nothing rendered, nothing paid

    rows = read_catalog(open_store(str(out), settings)).to_pylist()
    assert len(rows) == len(PHRASES)
    for row in rows:
        assert row["text_expected"] == [PHRASES[row["row_id"]]]
        wrong = _misspelt(row["output_uri"])
        assert row["text_ok"] is (not wrong), row["text_found"]
        assert row["status"] == ("text_mismatch" if wrong else "succeeded")
        assert row["rerolls"] == 0
    assert any(row["status"] == "text_mismatch" for row in rows)

    # Again, from the catalog's own expected text now: the same verdicts, still free.
    again = CliRunner().invoke(app, ["text-check", str(out), "--workers", "1"])
    assert again.exit_code == 0, again.output
    assert "0 statuses changed" in again.output
    assert sim.ledger()["billed_images"] == billed

    # The report counts them; the HTML page shows expected beside read.
    store = open_store(str(out), settings)
    counts = report(store).text
    assert counts.checked == 4
    assert counts.passed + counts.mismatched == 4
    page = render_html_report(store)
    assert "Text checks (" in page
    assert "MISSPELT" in page
    assert "expected</dt>" in page
