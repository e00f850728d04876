"""One run over a mixed manifest: Qwen, FLUX and GPT Image rows and edits, each simulator
over HTTP; catalog costs equal what each billed, the estimate and a budget hold."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures_providers import PROVIDER_KEY
from PIL import Image
from support import engine_settings

from qwbatch.budget.policy import BudgetPolicy
from qwbatch.catalog.table import read_catalog
from qwbatch.core.costs import money
from qwbatch.core.settings import Settings
from qwbatch.report.compare import make_compare_sheet
from qwbatch.runs import runner
from qwbatch.simulator import SimulatorHandle
from qwbatch.storage.stores import open_store


def write_manifest(folder: Path) -> Path:
    buffer = io.BytesIO()
    Image.new("RGB", (512, 512), (30, 120, 200)).save(buffer, format="PNG")
    (folder / "shoe.png").write_bytes(buffer.getvalue())
    rows = [
        ("q1", "A shop sign that says OPEN", "generate", "qwen-image-2.0", "1024*1024", None, None),
        ("f1", "A shop sign that says OPEN", "generate", "flux-2-pro", "1024*1024", None, None),
        (
            "g1",
            "A shop sign that says OPEN",
            "generate",
            "gpt-image-2",
            "1024*1024",
            '{"quality": "low"}',
            None,
        ),
        (
            "qe",
            "Make the shoe red",
            "edit",
            "qwen-image-edit-plus",
            "1024*1024",
            None,
            ["shoe.png"],
        ),
        ("fe", "Make the shoe red", "edit", "flux-2-pro", "1024*1024", None, ["shoe.png"]),
        (
            "ge",
            "Make the shoe red",
            "edit",
            "gpt-image-2",
            "1024*1024",
            '{"quality": "medium"}',
            ["shoe.png"],
        ),
    ]
    columns = ["id", "prompt", "mode", "model", "size", "params", "input_images"]
    table = pa.table({name: [row[i] for row in rows] for i, name in enumerate(columns)})
    many = pa.table(
        {
            "id": ["m1"],
            "prompt": ["A neon sign that says NOODLES"],
            "size": ["1024*1024"],
            "models": [["qwen-image-2.0", "flux-2-klein-4b", "gpt-image-2"]],
        }
    )
    path = folder / "mixed.parquet"
    pq.write_table(pa.concat_tables([table, many], promote_options="default"), path)
    return path


@pytest.fixture
def settings(
    sim: SimulatorHandle, bfl_sim: SimulatorHandle, openai_sim: SimulatorHandle
) -> Settings:
    sim.configure(fast=True)
    return engine_settings(
        sim,
        bfl_base_url=bfl_sim.root_url,
        bfl_api_key=PROVIDER_KEY,
        openai_base_url=f"{openai_sim.root_url}/v1",
        openai_api_key=PROVIDER_KEY,
        budget_backend="local",
        backoff_max_s=0.05,
    )


def test_a_mixed_manifest_runs_in_one_run_and_bills_each_provider_exactly(
    sim: SimulatorHandle,
    bfl_sim: SimulatorHandle,
    openai_sim: SimulatorHandle,
    settings: Settings,
    tmp_path: Path,
) -> None:
    manifest = write_manifest(tmp_path)
    out = str(tmp_path / "out")
    estimate = runner.estimate(str(manifest), None, settings=settings).estimate
    assert estimate is not None
    assert estimate.requests == 9
    budget = BudgetPolicy(money(estimate.total), "refuse")  # the estimate is an upper bound
    prepared = runner.prepare(str(manifest), out, settings=settings, budget=budget)
    spec = runner.open_budget(prepared.plan, settings)
    shards = [
        runner.render_shard(
            key, out=out, run_id=prepared.plan.run_id, manifest_dir=str(tmp_path), settings=settings
        )
        for key in prepared.plan.shard_keys
    ]
    summary = runner.finish(prepared, shards, out=out, settings=settings, began=0.0)
    if spec is not None:
        runner.close_budget(spec)

    rows = read_catalog(open_store(out, settings)).to_pylist()
    assert {r["status"] for r in rows} == {"succeeded"}, [
        (r["row_id"], r["error_message"]) for r in rows if r["status"] != "succeeded"
    ]
    assert len(rows) == 9

    def spent(provider_models: set[str]) -> float:
        return sum(r["cost"] for r in rows if r["model"] in provider_models)

    bfl_rows = {"flux-2-pro", "flux-2-klein-4b"}
    assert spent(bfl_rows) == pytest.approx(bfl_sim.ledger()["billed_usd"])
    assert spent({"gpt-image-2"}) == pytest.approx(openai_sim.ledger()["billed_usd"])
    qwen = sim.ledger()["billed_images"]
    assert qwen == 3
    assert spent({"qwen-image-2.0", "qwen-image-edit-plus"}) == pytest.approx(2 * 0.035 + 0.03)
    assert summary.cost == pytest.approx(sum(r["cost"] for r in rows))
    assert summary.cost <= float(estimate.total)

    sheet = make_compare_sheet(open_store(out, settings), blind=True, seed=3)
    lines = {line.key: line for line in sheet.lines}
    assert len(lines["m1"].cells) == 3  # the models column: one line, three columns
    assert len(lines["A shop sign that says OPEN"].cells) == 3  # rows of one prompt line up
    assert sheet.png().startswith(b"\x89PNG")
    assert "flux" not in sheet.html()  # blind: the key is apart
    shown = {sheet.key["m1"][label] for label in lines["m1"].cells}
    assert shown == {"qwen-image-2.0", "flux-2-klein-4b", "gpt-image-2"}
