"""The CLI's edit-input side: ``validate`` checks inputs as a run would, ``lineage`` traces."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from typer.testing import CliRunner

from qwbatch.catalog import table as catalog
from qwbatch.cli import app
from qwbatch.core.types import CatalogRecord
from qwbatch.storage.stores import LocalStore

ROOT = Path(__file__).parents[2]
EDIT_DEMO = ROOT / "manifests" / "edit-demo.parquet"
runner = CliRunner()


def test_validate_checks_edit_inputs_with_pillow() -> None:
    result = runner.invoke(app, ["validate", str(EDIT_DEMO), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    reasons = {r["id"]: r["reason"] for r in report["rejects"]}
    assert set(reasons) == {"broken-input", "not-an-image", "product-01-marble"}
    assert "truncated or corrupt image" in reasons["broken-input"]
    assert "not an image" in reasons["not-an-image"]
    assert "needs the output store (qwbatch validate --out)" in reasons["product-01-marble"]
    assert report["valid"] == pq.read_table(EDIT_DEMO).num_rows - 3


def _catalog_with(out: Path, row_id: str, sha256: str, inputs: list[str]) -> str:
    store = LocalStore(out)
    buffer = io.BytesIO()
    Image.new("RGB", (512, 512), (9, 99, 199)).save(buffer, format="PNG")
    uri = store.put(f"images/aa/{row_id}/0.png", buffer.getvalue()).uri
    record = CatalogRecord(
        run_id="r1",
        row_id=row_id,
        request_key="k" * 64,
        mode="edit" if inputs else "generate",
        model="qwen-image-2.0",
        prompt=f"prompt of {row_id}",
        size=None,
        seed=1,
        status="succeeded",
        image_index=0,
        output_uri=uri,
        sha256=sha256,
        input_images=inputs,
        input_sha256=["0" * 64] * len(inputs),
        finished_at=1.0,
    )
    catalog.write_part(store, [record], run_id="r1", label=row_id)
    return uri


def test_validate_with_out_resolves_catalog_refs_and_stages_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _catalog_with(out, "product-01", "1" * 64, [])
    manifest = tmp_path / "m.parquet"
    pq.write_table(
        pa.table(
            {
                "id": ["a"],
                "prompt": ["edit it"],
                "mode": ["edit"],
                "input_images": [["catalog:product-01"]],
            }
        ),
        manifest,
    )
    result = runner.invoke(app, ["validate", str(manifest), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "1 valid rows, 0 rejected" in result.output
    assert not (out / "inputs").exists()


def test_lineage_prints_the_chain(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _catalog_with(out, "parent", "1" * 64, ["photos/mug.jpg"])
    record = CatalogRecord(
        run_id="r2",
        row_id="child",
        request_key="c" * 64,
        mode="edit",
        model="qwen-image-2.0",
        prompt="add snow",
        size=None,
        seed=1,
        status="succeeded",
        image_index=0,
        output_uri="file:///x/child.png",
        sha256="2" * 64,
        input_images=["catalog:parent"],
        input_sha256=["1" * 64],
        finished_at=2.0,
    )
    catalog.write_part(LocalStore(out), [record], run_id="r2", label="child")

    result = runner.invoke(app, ["lineage", "child", "--out", str(out)])

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("child  [edit qwen-image-2.0, run r2]")
    assert "Image 1: catalog:parent, the output of:" in result.output
    assert any(line.strip().startswith("parent  [edit") for line in lines)
    assert "Image 1: photos/mug.jpg  sha256 000000000000" in result.output

    missing = runner.invoke(app, ["lineage", "nobody", "--out", str(out)])
    assert missing.exit_code == 2
    assert "has no output for row 'nobody'" in missing.output
