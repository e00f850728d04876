"""One definition of spend, seen the same everywhere: the HTML page, ``qwbatch report`` and
its ``--json``, the contact sheet header, the run summary and the Prefect artifacts' text, on a
DEST with a trimmed run, a full run and a rerun; every figure is a DuckDB sum over the catalog.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from local_run import render_all
from support import KEY, engine_settings
from typer.testing import CliRunner

from qwbatch.budget.policy import BudgetPolicy
from qwbatch.catalog.spend import spend
from qwbatch.cli import app
from qwbatch.core.costs import money
from qwbatch.report.contact_sheet import make_contact_sheet
from qwbatch.report.html import render_html_report
from qwbatch.report.numbers import cost_table, report, run_markdown
from qwbatch.runs.summary import RunSummary
from qwbatch.storage.stores import LocalStore

TRIMMED, FULL, RERUN = (
    "20260301T000000Z-aaaaaa",
    "20260302T000000Z-bbbbbb",
    "20260303T000000Z-cccccc",
)
cli = CliRunner()


@pytest.fixture(scope="module")
def runs(simulator, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[RunSummary]]:
    """A trimmed run (budget 0.20 USD of 0.41: rows skipped), the full run (the rest rendered,
    the first run's images deduplicated), and a rerun (everything deduplicated, nothing paid)."""
    simulator.reset(restore_config=True)
    simulator.configure(api_key=KEY, fast=True)
    settings = engine_settings(simulator)
    tmp = tmp_path_factory.mktemp("spend")
    rows: list[dict[str, object]] = [
        {"id": f"p{i}", "prompt": f"product {i}", "model": "qwen-image-2.0", "n": 1 + i % 2}
        for i in range(6)
    ]
    rows.append({"id": "max", "prompt": "a banner", "model": "qwen-image-max", "n": 1})
    manifest = tmp / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    out = tmp / "out"
    summaries = [
        render_all(
            manifest,
            str(out),
            settings,
            run_id=TRIMMED,
            budget=BudgetPolicy(money("0.20"), "trim"),
        ),
        render_all(manifest, str(out), settings, run_id=FULL, auto_resume=False),
        render_all(manifest, str(out), settings, run_id=RERUN, auto_resume=False),
    ]
    return out, summaries


def duck(out: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.read_parquet(f"{out}/catalog/*.parquet", union_by_name=True).create_view("cat")
    return con


def one(con: duckdb.DuckDBPyConnection, sql: str, *params: object) -> float:
    (value,) = con.execute(sql, list(params)).fetchone() or (None,)
    return round(float(value or 0.0), 6)


def cents(text: str) -> float:
    return round(float(text), 4)


def test_the_dest_holds_trims_reruns_and_deduplicated_images(runs) -> None:
    out, (trimmed, full, rerun) = runs
    con = duck(out)
    statuses = dict(con.execute("select status, count(*) from cat group by 1").fetchall())
    assert statuses["skipped_budget"] == trimmed.skipped_budget > 0
    assert statuses["deduplicated"] > 0
    assert trimmed.cost > 0
    assert full.cost > 0
    assert rerun.cost == 0
    assert one(con, "select sum(cost) from cat where run_id = ?", RERUN) == 0


def test_report_json_has_the_run_and_lifetime_spend_duckdb_sums(runs) -> None:
    out, _ = runs
    con = duck(out)
    lifetime = one(con, "select sum(cost) from cat")
    for run in (TRIMMED, FULL, RERUN):
        result = cli.invoke(app, ["report", str(out), "--run", run, "--json"])
        assert result.exit_code == 0, result.output
        figures = json.loads(result.output)["spend"]
        assert figures["run_cost"]["USD"] == one(
            con, "select sum(cost) from cat where run_id = ?", run
        )
        assert figures["lifetime_cost"]["USD"] == lifetime
        assert figures["runs"] == 3
    everything = json.loads(cli.invoke(app, ["report", str(out), "--json"]).output)
    assert everything["spend"]["lifetime_cost"]["USD"] == everything["cost"]["USD"] == lifetime
    table = cli.invoke(app, ["report", str(out), "--run", RERUN])
    flat = " ".join(table.output.replace("│", " ").split())  # the cell wraps at 80 columns
    assert f"run {RERUN} spent 0.0000 USD · lifetime {lifetime:.4f} USD over 3 runs" in flat


def card(html: str, label: str) -> str:
    match = re.search(r"<b>([^<]*)</b><span>" + re.escape(label) + "</span>", html)
    assert match, f"no card {label!r}"
    return match.group(1)


def test_page_after_a_rerun_shows_what_its_images_cost_and_who_paid(runs) -> None:
    out, _ = runs
    con = duck(out)
    lifetime = one(con, "select sum(cost) from cat")
    store = LocalStore(out)
    for run in (None, "latest"):
        html = render_html_report(store, run)
        # Every image was deduplicated by the rerun, yet the page tells what they cost.
        assert cents(card(html, "cost of the images shown (USD)")) == round(lifetime, 4)
        assert cents(card(html, "lifetime spend (3 runs)")) == round(lifetime, 4)
        assert cents(card(html, f"spent by run {RERUN}")) == 0.0
        assert cents(card(html, "skipped by the budget")) == 0
        # By model: qwen-image-max cost what its run paid, not 0.
        max_cost = one(con, "select sum(cost) from cat where model = 'qwen-image-max'")
        assert max_cost > 0
        row = re.search(r"<td>qwen-image-max</td>((?:<td class=num>[^<]*</td>){5})", html)
        assert row, html
        assert cents(re.findall(r">([^<]*)<", row.group(1))[-1]) == round(max_cost, 4)
        # Each card names the run that rendered its image and what that run paid for it.
        origins = con.execute(
            "select run_id, cost from cat where status = 'succeeded' and row_id = 'max'"
        ).fetchall()
        ((paid_by, paid),) = origins
        assert f"rendered by run {paid_by}: {paid:.4f} USD" in html


def test_page_of_the_trimmed_run_gives_budget_skips_their_own_section(runs) -> None:
    out, (trimmed, _, _) = runs
    html = render_html_report(LocalStore(out), TRIMMED)
    skipped = trimmed.skipped_budget
    assert f"Skipped by the budget ({skipped}): not sent, nothing spent" in html
    assert card(html, "skipped by the budget") == str(skipped)
    assert card(html, "failed") == "0"
    assert "<h2>Failures (0)</h2>" in html
    assert "skipped (budget)" in html
    con = duck(out)
    spent = one(con, "select sum(cost) from cat where run_id = ?", TRIMMED)
    assert cents(card(html, f"spent by run {TRIMMED}")) == round(spent, 4)
    assert cents(card(html, "cost of the images shown (USD)")) == round(spent, 4)


def test_sheet_summary_and_artifacts_say_the_same(runs) -> None:
    out, (_, full, rerun) = runs
    con = duck(out)
    lifetime = one(con, "select sum(cost) from cat")
    store = LocalStore(out)
    line = f"lifetime {lifetime:.4f} USD over 3 runs"
    sheet = make_contact_sheet(store, run="latest")
    assert sheet.subtitle == f"run {RERUN} spent 0.0000 USD · {line}"
    assert make_contact_sheet(store).subtitle == sheet.subtitle
    assert (rerun.lifetime_cost, rerun.lifetime_runs) == (lifetime, 3)
    assert full.lifetime_cost == one(
        con, "select sum(cost) from cat where run_id in (?, ?)", TRIMMED, FULL
    )
    assert any(f"{lifetime:.4f} USD over 3 runs" in text for text in rerun.lines())
    numbers = report(store, run_id=RERUN)
    markdown = run_markdown(rerun, numbers)
    assert f"| lifetime spend in DEST (3 runs) | {lifetime:.4f} USD |" in markdown
    totals = {
        line["by"]: line["cost"]
        for line in cost_table(numbers)
        if line["by"] in ("run", "lifetime")
    }
    assert totals == {"run": 0.0, "lifetime": lifetime}
    assert spend(store, RERUN).line() == f"run {RERUN} spent 0.0000 USD · {line}"
