"""End to end: estimate vs bill, budgets and run artifacts, through the CLI and the flow under a
real Prefect server, against the simulator over HTTP (its ledger is the provider's bill)."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import KEY
from typer.testing import CliRunner

from flows.render import render_manifest
from qwbatch.budget import resolve_backend
from qwbatch.cli import app
from qwbatch.core.costs import PriceTable
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings

DEMO = Path(__file__).parents[2] / "manifests" / "demo.parquet"


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    """The demo manifest without its expected_text: the fast simulator draws no text, so
    every checked image would fail and re-roll, and the bill would no longer be the
    estimate (text checks are tested in tests/render/test_text_rerolls.py)."""
    path = tmp_path / "demo.parquet"
    pq.write_table(pq.read_table(DEMO).drop_columns(["expected_text"]), path)
    return path


PRICES = PriceTable.load(Settings(), ModelTable.load())
cli = CliRunner()


@pytest.fixture
def provider_env(fast_sim_env):
    fast_sim_env.configure(fast=True)  # the simulator's fast images, for many renders
    return fast_sim_env


def ledger_by_model(sim) -> dict[str, int]:
    return dict(sim.ledger()["by_model"])


def read_artifacts(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def go():
        async with get_client() as client:
            return await client.read_artifacts(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )

    return {artifact.type: artifact for artifact in asyncio.run(go())}


@pytest.mark.slow
def test_estimate_equals_the_bill_per_model_and_in_total(
    prefect_server, provider_env, tmp_path: Path, demo: Path
) -> None:
    out = tmp_path / "out"
    # Part of the manifest is already rendered: the estimate must not count it again.
    first = tmp_path / "first.parquet"
    pq.write_table(pq.read_table(demo).slice(0, 5), first)
    render_manifest(manifest=str(first), out=str(out))
    before = ledger_by_model(provider_env)

    result = cli.invoke(app, ["estimate", str(demo), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["deduplicated"] == 5
    assert figures["folded"] == 1
    assert figures["currency"] == "USD"
    assert provider_env.ledger()["billed_images"] == sum(before.values())  # estimate is free

    state = render_manifest(manifest=str(demo), out=str(out), return_state=True)
    summary = state.result()
    assert summary.failed == 0
    after = ledger_by_model(provider_env)
    billed = {m: after.get(m, 0) - before.get(m, 0) for m in after}
    billed = {m: images for m, images in billed.items() if images}

    # Per model: the same images, and the same money at the table's prices.
    assert {m: line["images"] for m, line in figures["by_model"].items()} == billed
    for model, line in figures["by_model"].items():
        assert Decimal(str(line["cost"])) == PRICES.cost(model, billed[model])
    bill = sum((PRICES.cost(m, images) for m, images in billed.items()), Decimal(0))
    assert Decimal(str(figures["total"])) == bill
    assert figures["images"] == sum(billed.values()) == summary.billed_images
    assert summary.cost == pytest.approx(float(bill))
    assert summary.estimated_cost == pytest.approx(float(bill))

    # The catalog rows of the run carry the same money, per model.
    rows = [r for r in pq.read_table(out / "catalog").to_pylist() if r["run_id"] == summary.run_id]
    for model, line in figures["by_model"].items():
        spent = sum(r["cost"] for r in rows if r["model"] == model)
        assert spent == pytest.approx(line["cost"]), model
    for row in rows:
        assert row["currency"] == "USD"
        assert row["unit_price"] in (0.0, float(PRICES.unit_price(row["model"]) or 0))

    # Every run publishes its artifacts: cost table, Markdown summary, finished progress.
    artifacts = read_artifacts(state.state_details.flow_run_id)
    assert set(artifacts) >= {"table", "markdown", "progress"}
    table = json.loads(artifacts["table"].data)
    by_model = {r["name"]: r for r in table if r["by"] == "model"}
    for model, line in figures["by_model"].items():
        assert by_model[model]["cost"] == pytest.approx(line["cost"])
    assert any(r["by"] == "tag" and r["name"] == "campaign=board-deck" for r in table)
    assert summary.run_id in artifacts["markdown"].data
    assert "Nothing failed." in artifacts["markdown"].data
    assert artifacts["progress"].data == 100.0
    assert KEY not in json.dumps([a.data for a in artifacts.values()], default=str)


def priority_manifest(path: Path) -> Path:
    pq.write_table(
        pa.table(
            {
                "id": ["low", "none", "top", "mid", "top-copy"],
                "prompt": ["a lamp", "a chair", "a poster", "a mug", "a poster"],
                "size": ["512*512"] * 5,
                "n": [1, 1, 2, 1, 2],
                "priority": pa.array([1, None, 9, 5, 9], pa.int32()),
            }
        ),
        path,
    )
    return path


@pytest.mark.slow
def test_budget_refusal_bills_nothing_and_trim_never_exceeds(
    prefect_server, provider_env, tmp_path: Path
) -> None:
    manifest = priority_manifest(tmp_path / "m.parquet")
    out = tmp_path / "out"
    # Under a Prefect server the run's budget is counted there, shared by every worker.
    assert resolve_backend(Settings()) == "prefect"
    # The plan: top (2 images, its copy folded), mid, low, none = 5 images x 0.035 = 0.175.
    refused = cli.invoke(app, ["run", str(manifest), "--out", str(out), "--budget", "0.1"])
    assert refused.exit_code == 2
    assert "refused" in refused.output
    assert "0.1750 USD" in refused.output
    assert "0.1000 USD" in refused.output
    assert provider_env.ledger()["billed_images"] == 0
    assert not (out / "catalog").exists()
    assert not (out / "runs").exists()

    budget = "0.12"  # three images at 0.035: top (2), then mid (1); low and none are skipped
    result = cli.invoke(
        app,
        ["run", str(manifest), "--out", str(out), "--budget", budget, "--budget-mode", "trim"],
    )
    assert result.exit_code == 0, result.output
    assert "2 rows skipped by the budget" in result.output
    ledger = provider_env.ledger()
    bill = sum((PRICES.cost(m, images) for m, images in ledger["by_model"].items()), Decimal(0))
    assert bill <= Decimal(budget)
    assert ledger["billed_images"] == 3
    rows = pq.read_table(out / "catalog").to_pylist()
    status = {}
    for row in rows:
        status.setdefault(row["row_id"], set()).add(row["status"])
    assert status == {
        "top": {"succeeded"},
        "top-copy": {"deduplicated"},
        "mid": {"succeeded"},
        "low": {"skipped_budget"},
        "none": {"skipped_budget"},
    }

    # A second trim run under the same budget pays only for what now fits.
    again = cli.invoke(
        app,
        ["run", str(manifest), "--out", str(out), "--budget", "0.05", "--budget-mode", "trim"],
    )
    assert again.exit_code == 0, again.output
    assert provider_env.ledger()["billed_images"] == 4  # low (priority 1) fits; none does not


@pytest.mark.slow
def test_a_digest_run_ends_with_its_digest_artifact(
    prefect_server, provider_env, tmp_path: Path, demo: Path
) -> None:
    out = tmp_path / "out"
    first = tmp_path / "first.parquet"
    pq.write_table(pq.read_table(demo).slice(0, 5), first)
    render_manifest(manifest=str(first), out=str(out))
    state = render_manifest(manifest=str(demo), out=str(out), digest=True, return_state=True)
    summary = state.result()
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))

    async def go():
        async with get_client() as client:
            return await client.read_artifacts(flow_run_filter=flow_run)

    by_key = {artifact.key: artifact for artifact in asyncio.run(go())}
    text = by_key["qwbatch-nightly-digest"].data
    assert f"# qwbatch nightly `{summary.run_id}`" in text
    assert "unchanged" in text
    assert "lifetime" in text
    assert "render-summary" in by_key  # the usual summary too
