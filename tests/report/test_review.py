"""Review: approve and reject in the page (headless Chromium), export, record, select, rerender."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chromium import CHROMIUM, session
from local_run import fast_settings, render_all
from typer.testing import CliRunner

from qwbatch.catalog import review
from qwbatch.catalog.table import read_catalog
from qwbatch.catalog.view import select_rows
from qwbatch.cli import app
from qwbatch.report.contact_sheet import make_contact_sheet
from qwbatch.report.html import render_html_report
from qwbatch.runs import rerender
from qwbatch.storage.stores import LocalStore

KEY = "sk-review-test-0123456789abcdef"
cli = CliRunner()


@pytest.fixture
def dest(sim, tmp_path: Path) -> tuple[Path, Path]:
    """A DEST with three images (rows a, b, c) and the manifest that made them."""
    sim.configure(api_key=KEY, fast=True)
    rows = [{"id": name, "prompt": f"autumn poster {name}"} for name in "abc"]
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    out = tmp_path / "out"
    render_all(manifest, str(out), fast_settings(sim, KEY))
    return manifest, out


def _figure(row: str) -> str:
    return f'figure[data-row="{row}"]'


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed")
def test_review_round_trip_in_chromium(dest: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = dest
    store = LocalStore(out)
    page = tmp_path / "page.html"
    page.write_text(render_html_report(store, review=True), encoding="utf-8")

    with session(tmp_path / "profile") as browser:
        browser.call("Page.enable")
        browser.open(page)
        count = "document.getElementById('review-count').textContent"
        assert browser.evaluate(count) == "0 approved, 0 rejected, 3 to review"
        browser.click(f"{_figure('a')} button.approve")
        browser.evaluate(
            f"(t => {{ t.value = 'logo cut off'; t.dispatchEvent(new Event('input')); }})"
            f"(document.querySelector('{_figure('b')} textarea'))"
        )
        browser.click(f"{_figure('b')} button.reject")
        assert browser.evaluate(count) == "1 approved, 1 rejected, 1 to review"
        (saved,) = browser.local_storage().values()
        assert {d["row_id"]: d["decision"] for d in json.loads(saved).values()} == {
            "a": "approved",
            "b": "rejected",
        }

        browser.open(page)  # kept in the browser: a reload shows the same decisions
        assert browser.evaluate(f"document.querySelector('{_figure('a')}').className") == (
            "approved"
        )
        assert browser.evaluate(f"document.querySelector('{_figure('b')} textarea').value") == (
            "logo cut off"
        )
        exported = browser.download("#review-export", tmp_path / "downloads")

    document = json.loads(exported.read_text(encoding="utf-8"))
    assert document["format"] == review.FORMAT
    assert document["dest"] == store.root_uri
    by_row = {d["row_id"]: d for d in document["decisions"]}
    assert (by_row["b"]["decision"], by_row["b"]["note"]) == ("rejected", "logo cut off")

    result = cli.invoke(app, ["review", str(out), str(exported)])
    assert result.exit_code == 0, result.output
    assert "recorded 2 decision(s): 1 approved, 1 rejected" in result.output

    # The page made again shows what DEST recorded.
    html = render_html_report(store, review=True)
    assert 'data-row="a" data-index="0"' in html
    assert 'data-recorded="approved"' in html
    assert 'data-recorded="rejected"' in html


def _decide(out: Path, verdicts: dict[str, str]) -> dict[str, object]:
    rows = {r["row_id"]: r for r in read_catalog(LocalStore(out)).to_pylist()}
    items = [
        {
            "run_id": rows[row]["run_id"],
            "row_id": row,
            "image_index": 0,
            "request_key": rows[row]["request_key"],
            "decision": verdict,
            "note": f"{verdict} by the test",
        }
        for row, verdict in verdicts.items()
    ]
    return {"format": review.FORMAT, "decisions": items}


def test_decisions_are_checked_and_select_approved_images(
    dest: tuple[Path, Path], tmp_path: Path
) -> None:
    _, out = dest
    store = LocalStore(out)
    document = _decide(out, {"a": "approved", "b": "rejected", "c": "approved"})
    document["decisions"].append(  # type: ignore[attr-defined]
        {"run_id": "no-such-run", "row_id": "a", "image_index": 0, "decision": "approved"}
    )
    file = tmp_path / "decisions.json"
    file.write_text(json.dumps(document), encoding="utf-8")
    result = cli.invoke(app, ["review", str(out), str(file)])
    assert result.exit_code == 1, result.output  # one refused, the rest recorded
    assert "recorded 3 decision(s): 2 approved, 1 rejected" in result.output
    assert "refused no-such-run/a#0: no such image in the catalog" in result.output

    # A later decision about the same image wins.
    later = _decide(out, {"c": "rejected"})
    review.record_decisions(store, later["decisions"])  # type: ignore[arg-type]
    assert {r["row_id"] for r in select_rows(store, approved_only=True)} == {"a"}
    assert make_contact_sheet(store, approved_only=True).shown == 1

    exported = tmp_path / "export"
    result = cli.invoke(
        app, ["export", str(out), "--to", str(exported), "--format", "files", "--approved-only"]
    )
    assert result.exit_code == 0, result.output
    (png,) = exported.rglob("*.png")  # a alone: b rejected, c rejected later
    assert png.name.startswith("a")

    refused = tmp_path / "not-decisions.json"
    refused.write_text('{"decisions": []}', encoding="utf-8")
    result = cli.invoke(app, ["review", str(out), str(refused)])
    assert result.exit_code == 2
    assert "not a decisions file" in result.output


def test_rejected_rows_render_again_with_a_new_seed_once(
    sim, dest: tuple[Path, Path], tmp_path: Path
) -> None:
    manifest, out = dest
    store = LocalStore(out)
    settings = fast_settings(sim, KEY)
    review.record_decisions(store, _decide(out, {"a": "approved", "b": "rejected"})["decisions"])  # type: ignore[arg-type]
    before = {r["row_id"]: r for r in read_catalog(store).to_pylist()}

    seeds = rerender.rejected_seeds(str(manifest), store, settings)
    assert seeds == {"b": rerender.new_seed(before["b"]["request_key"])}
    again = tmp_path / "again.parquet"
    pq.write_table(rerender.reseeded(str(manifest), seeds), again)
    billed = sim.ledger()["billed_images"]
    summary = render_all(again, str(out), settings)
    assert (summary.requests, summary.deduplicated) == (1, 2)  # b alone is paid for again
    assert sim.ledger()["billed_images"] == billed + 1
    rows = {r["row_id"]: r for r in select_rows(store, run=summary.run_id)}
    assert rows["b"]["seed"] == seeds["b"] != before["b"]["seed"]
    assert rows["b"]["request_key"] != before["b"]["request_key"]
    assert rows["b"]["cost"] > 0

    # The same decisions give the same seeds: a second rerender pays nothing.
    assert rerender.rejected_seeds(str(manifest), store, settings) == seeds
    second = render_all(again, str(out), settings)
    assert (second.requests, sim.ledger()["billed_images"]) == (0, billed + 1)


def test_run_rerender_rejected_on_the_command_line(
    sim, dest: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI path: nothing rejected renders nothing (no Prefect needed); a rejected row is
    a new request the budget counts (refused here before any call)."""
    manifest, out = dest
    monkeypatch.setenv("QWBATCH_DASHSCOPE_BASE_URL", sim.base_url)
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    billed = sim.ledger()["billed_images"]
    command = ["run", str(manifest), "--out", str(out), "--rerender-rejected"]
    result = cli.invoke(app, [*command, "--budget", "0.001"])  # nothing new: within it
    assert result.exit_code == 0, result.output

    review.record_decisions(LocalStore(out), _decide(out, {"c": "rejected"})["decisions"])  # type: ignore[arg-type]
    result = cli.invoke(app, [*command, "--budget", "0.001"])  # c is new: over it
    assert result.exit_code == 2, result.output
    assert "budget" in result.output
    assert sim.ledger()["billed_images"] == billed  # refused before any call

    result = cli.invoke(app, ["run", str(manifest), "--out", str(out), "--target-size", "wide"])
    assert result.exit_code == 2
    assert "--target-size 'wide' is not of the form W*H" in result.output
