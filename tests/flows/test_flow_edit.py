"""End to end: the edit demo through the render-manifest flow under a real Prefect server,
against the simulator over HTTP, chained onto an earlier generation run."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import KEY

from flows.render import render_manifest
from qwbatch.core.settings import Settings
from qwbatch.inputs.lineage import trace
from qwbatch.plan import shard_codec
from qwbatch.storage.stores import open_store

EDIT_DEMO = Path(__file__).parents[2] / "manifests" / "edit-demo.parquet"


@pytest.mark.slow
@pytest.mark.usefixtures("fast_sim_env")
def test_edit_demo_renders_chains_and_reruns_for_free(
    prefect_server,
    sim,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sim.configure(strict_input_sides=True)
    out = tmp_path / "out"
    # The generation step the edit demo chains onto (its row product-01).
    first = tmp_path / "gen.parquet"
    pq.write_table(
        pa.table(
            {
                "id": ["product-01"],
                "prompt": ["Studio photo of a coffee dripper"],
                "size": ["1024*1024"],
            }
        ),
        first,
    )
    render_manifest(manifest=str(first), out=str(out))

    summary = render_manifest(manifest=str(EDIT_DEMO), out=str(out))

    assert (summary.rejected, summary.failed, summary.folded) == (2, 0, 1)
    rows = {r["row_id"]: r for r in pq.read_table(out / "catalog").to_pylist()}
    edits = {k: r for k, r in rows.items() if r["mode"] == "edit"}
    assert len(edits) == pq.read_table(EDIT_DEMO).num_rows - 2
    assert edits["mug-marble-copy"]["status"] == "deduplicated"
    assert edits["mug-marble-copy"]["input_images"] == ["edit-inputs/mug-copy.jpg"]
    assert edits["mug-marble-copy"]["input_sha256"] == edits["mug-marble"]["input_sha256"]
    assert edits["sketch-to-flat"]["input_notes"][0].startswith("resized 240*180 -> 512*384 px")
    assert edits["logo-navy-gold"]["input_notes"] == ["converted GIF to PNG; first frame of 3"]
    assert edits["room-set"]["input_notes"] == ["", "", "converted BMP to PNG"]
    chained = edits["product-01-marble"]
    assert chained["input_sha256"] == [rows["product-01"]["sha256"]]
    assert chained["input_notes"] == [f"from {rows['product-01']['output_uri']}"]
    lineage = trace(open_store(str(out), Settings()), "product-01-marble")
    assert lineage.inputs[0].parent is not None
    assert lineage.inputs[0].parent.row_id == "product-01"
    rejects = pq.read_table(out / "rejects" / f"rejects-{summary.run_id}.parquet").to_pylist()
    assert {r["id"] for r in rejects} == {"broken-input", "not-an-image"}
    # Every billed edit was sent inputs within the provider's sides (the simulator is strict).
    ledger = sim.ledger()
    assert ledger["billed_images"] == 1 + summary.billed_images
    for entry in ledger["entries"]:
        for received in entry["inputs"]:
            assert min(received["width"], received["height"]) >= 384
            assert max(received["width"], received["height"]) <= 3072

    again = render_manifest(manifest=str(EDIT_DEMO), out=str(out))
    assert (again.billed_images, again.requests) == (0, 0)
    assert sim.ledger()["billed_images"] == ledger["billed_images"]

    assert KEY not in caplog.text
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            data = shard_codec.decompress(data) if path.suffix in (".gz", ".zst") else data
            assert KEY.encode() not in data, path
