"""``qwbatch report``: every total it prints is reproduced by a DuckDB query over the catalog."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import engine_settings
from typer.testing import CliRunner

from qwbatch.cli import app
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.plan.planner import plan_run
from qwbatch.runs import runner
from qwbatch.storage.stores import open_store

cli = CliRunner()


def write_manifest(path: Path, rows: list[dict[str, object]]) -> Path:
    pq.write_table(
        pa.Table.from_pylist(
            rows,
            schema=pa.schema(
                [
                    ("id", pa.string()),
                    ("prompt", pa.string()),
                    ("model", pa.string()),
                    ("size", pa.string()),
                    ("n", pa.int32()),
                    ("tags", pa.map_(pa.string(), pa.string())),
                ]
            ),
        ),
        path,
    )
    return path


def render(manifest: Path, out: Path, settings: Settings, run_id: str) -> None:
    """Plan and render every shard, as the flow does (no Prefect needed for the numbers)."""
    store = open_store(str(out), settings)
    plan = plan_run(
        manifest, store, settings=settings, table=ModelTable.load(), run_id=run_id, shard_size=4
    )
    for key in plan.shard_keys:
        runner.render_shard(
            key, out=str(out), run_id=run_id, manifest_dir=str(manifest.parent), settings=settings
        )


@pytest.fixture
def catalog_dest(sim, tmp_path: Path) -> Path:
    """Two runs with every kind of outcome: successes, n>1 partial failures, moderation,
    retried 5xx, lost answers (ambiguous), duplicates and outputs already rendered."""
    sim.configure(fast=True, error_5xx_rate=0.3, partial_failure_rate=0.2, seed=4)
    settings = engine_settings(sim)
    rows: list[dict[str, object]] = [
        {
            "id": f"p{i}",
            "prompt": f"product {i}",
            "size": "512*512",
            "n": 1 + i % 3,
            "tags": [("campaign", "autumn"), ("sku", f"s{i % 2}")],
        }
        for i in range(8)
    ]
    rows += [
        {
            "id": "pro",
            "prompt": "a poster",
            "model": "qwen-image-2.0-pro",
            "size": "512*512",
            "n": 2,
            "tags": [("campaign", "launch")],
        },
        {"id": "plus", "prompt": "a slide", "model": "qwen-image-plus", "size": "1328*1328"},
        {
            "id": "blocked",
            "prompt": "__moderate__ this",
            "size": "512*512",
            "tags": [("campaign", "launch")],
        },
        {
            "id": "copy",
            "prompt": "product 0",
            "size": "512*512",
            "n": 1,
            "tags": [("campaign", "autumn"), ("variant", "b")],
        },
    ]
    out = tmp_path / "out"
    render(write_manifest(tmp_path / "one.parquet", rows), out, settings, "run-one")
    sim.configure(drop_connection_rate=0.5)
    rows += [{"id": f"new{i}", "prompt": f"new picture {i}", "size": "512*512"} for i in range(4)]
    render(write_manifest(tmp_path / "two.parquet", rows), out, settings, "run-two")
    return out


def query(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple[object, ...]]:
    return con.execute(sql).fetchall()


def money(value: object) -> float:
    return round(float(value or 0.0), 6)  # type: ignore[arg-type]


def test_report_totals_are_reproduced_by_duckdb(catalog_dest: Path) -> None:
    result = cli.invoke(app, ["report", str(catalog_dest), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)

    con = duckdb.connect()
    table = con.read_parquet(f"{catalog_dest}/catalog/*.parquet", union_by_name=True)
    table.create_view("cat")
    # Counts by status, images, requests.
    assert dict(query(con, "select status, count(*) from cat group by 1")) == report["statuses"]
    assert query(con, "select count(*) from cat") == [(report["rows"],)]
    assert query(con, "select count(*) from cat where status = 'succeeded'") == [
        (report["images"],)
    ]
    assert query(con, "select count(distinct (run_id, request_key)) from cat") == [
        (report["requests"],)
    ]
    # Spend, in total and by model.
    for currency, cost, possible in query(
        con, "select currency, sum(cost), sum(possible_cost) from cat group by 1"
    ):
        assert money(cost) == report["cost"][currency]
        assert money(possible) == report["possible_cost"][currency]
    by_model = {
        (name, currency): (images, money(cost), money(possible))
        for name, currency, images, cost, possible in query(
            con,
            "select model, currency, count(*) filter (where status = 'succeeded'), sum(cost), "
            "sum(possible_cost) from cat group by 1, 2",
        )
    }
    assert by_model == {
        (line["name"], line["currency"]): (line["images"], line["cost"], line["possible_cost"])
        for line in report["by_model"]
    }
    # Spend by tag: a row counts under each of its tags, or under (untagged).
    by_tag = {
        (name, currency): (images, money(cost))
        for name, currency, images, cost in query(
            con,
            """
            with labelled as (
                select case when e.value = '' then e.key else e.key || '=' || e.value end
                       as label, status, cost, currency
                from (select unnest(map_entries(tags)) as e, * from cat)
                union all
                select '(untagged)', status, cost, currency
                from cat where tags is null or cardinality(tags) = 0
            )
            select label, currency, count(*) filter (where status = 'succeeded'), sum(cost)
            from labelled group by 1, 2
            """,
        )
    }
    assert by_tag == {
        (line["name"], line["currency"]): (line["images"], line["cost"])
        for line in report["by_tag"]
    }
    # By run: spend, calls and retries (per request, its largest attempts), wall time.
    by_run = {
        run_id: (images, money(cost), calls, retries, round(wall, 3))
        for run_id, images, cost, calls, retries, wall in query(
            con,
            """
            with requests as (
                select run_id, request_key, max(attempts) as calls from cat group by 1, 2
            ), runs as (
                select run_id, count(*) filter (where status = 'succeeded') as images,
                       sum(cost) as cost,
                       date_diff('millisecond', min(started_at), max(finished_at)) / 1000.0
                       as wall
                from cat group by 1
            )
            select r.run_id, r.images, r.cost, sum(q.calls), sum(greatest(q.calls - 1, 0)),
                   r.wall
            from runs r join requests q using (run_id)
            group by r.run_id, r.images, r.cost, r.wall
            """,
        )
    }
    assert by_run == {
        run["run_id"]: (run["images"], run["cost"], run["calls"], run["retries"], run["wall_s"])
        for run in report["runs"]
    }
    assert report["calls"] == sum(run[2] for run in by_run.values())
    assert report["retries"] == sum(run[3] for run in by_run.values())
    # Failures by status and error class.
    failures: dict[str, dict[str, int]] = {}
    for status, code, count in query(
        con,
        "select status, coalesce(error_code, '(none)'), count(*) from cat "
        "where status in ('failed', 'moderated', 'ambiguous', 'expired') group by 1, 2",
    ):
        failures.setdefault(status, {})[code] = count
    assert failures == report["failures"]

    # The catalog really holds every kind of outcome, so the comparison above means something.
    assert report["retries"] > 0
    assert {"succeeded", "deduplicated", "moderated", "ambiguous"} <= set(report["statuses"])
    assert "PartialFailure" in report["failures"].get("failed", {})
    assert report["possible_cost"]["USD"] > 0
    assert len(report["runs"]) == 2


def test_report_of_one_run_and_its_table(catalog_dest: Path) -> None:
    one = json.loads(
        cli.invoke(app, ["report", str(catalog_dest), "--run", "run-one", "--json"]).output
    )
    assert [run["run_id"] for run in one["runs"]] == ["run-one"]
    table = cli.invoke(app, ["report", str(catalog_dest), "--run", "run-two"])
    assert table.exit_code == 0, table.output
    for heading in ("spend by model", "spend by tag", "by run", "failures by error class"):
        assert heading in table.output
    missing = cli.invoke(app, ["report", str(catalog_dest), "--run", "nope"])
    assert missing.exit_code == 2
    assert "run-one" in missing.output
    assert "run-two" in missing.output
    nothing = cli.invoke(app, ["report", str(catalog_dest / "elsewhere")])
    assert nothing.exit_code == 2
    assert "no catalog" in nothing.output
