"""``qwbatch catalog rebuild`` and ``compact``: the catalog restored from object metadata (in
S3, over moto's HTTP server, and in a folder), and merged without a reader seeing double."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from local_run import render_all
from support import engine_settings
from typer.testing import CliRunner

from qwbatch.catalog import table as catalog
from qwbatch.catalog.rebuild import rebuild
from qwbatch.cli import app
from qwbatch.runs.compaction import compact, write_merged
from qwbatch.storage.layout import COMPACTION_PREFIX, REQUEST_DOC
from qwbatch.storage.stores import LocalStore, open_store

#: Columns a rebuild restores exactly from object metadata.
RESTORED = [
    "run_id",
    "row_id",
    "request_key",
    "mode",
    "model",
    "prompt",
    "negative_prompt",
    "size",
    "n",
    "seed",
    "image_index",
    "status",
    "output_uri",
    "sha256",
    "bytes",
    "width",
    "height",
    "unit_price",
    "currency",
    "cost",
    "tags",
    "provider_task_id",
    "provider_request_id",
]
LONG_CJK = "一只猫坐在窗台上，望着窗外的雨，" * 40  # ~640 characters, ~1.9 KB of UTF-8


def write_manifest(path: Path, rows: int = 6) -> Path:
    prompts = [f"poster {i}: «spring sale» ☂" for i in range(rows - 1)] + [LONG_CJK]
    pq.write_table(
        pa.table(
            {
                "id": [f"row-{i}" for i in range(rows)],
                "prompt": prompts,
                "negative_prompt": ["blurry"] + [None] * (rows - 1),
                "model": ["qwen-image-plus", *["qwen-image-2.0"] * (rows - 1)],
                "size": ["1328*1328", *["512*512"] * (rows - 1)],
                "n": [1, 2, *[1] * (rows - 2)],
                "tags": pa.array(
                    [[("campaign", "春"), ("sku", str(i))] for i in range(rows)],
                    pa.map_(pa.string(), pa.string()),
                ),
            }
        ),
        path,
    )
    return path


def succeeded(store) -> list[dict]:
    rows = catalog.read_catalog(store).to_pylist()
    return sorted(
        ({k: r[k] for k in RESTORED} for r in rows if r["status"] == "succeeded"),
        key=lambda r: r["output_uri"],
    )


def test_rebuild_restores_every_image_row_from_s3_metadata(
    sim, s3_settings, s3_bucket, tmp_path
) -> None:
    sim.configure(fast=True)
    settings = engine_settings(
        sim,
        s3_endpoint_url=s3_settings.s3_endpoint_url,
        s3_region="us-east-1",
        s3_addressing_style="path",
        shard_size=3,
    )
    out = f"s3://{s3_bucket}/renders"
    summary = render_all(write_manifest(tmp_path / "m.parquet"), out, settings)
    assert summary.statuses == {"succeeded": 7}
    store = open_store(out, settings)
    original = succeeded(store)
    assert len(original) == 7
    # The long CJK prompt did not fit S3's 2 KB of metadata: it rides in a request document.
    docs = [k for k in store.list("images/") if k.endswith(REQUEST_DOC)]
    assert len(docs) == 1

    for key in catalog.part_keys(store):
        store.delete(key)
    result = rebuild(store)
    assert (result.images, result.rows_added, result.unusable) == (7, 7, [])
    assert succeeded(store) == original
    assert rebuild(store).rows_added == 0  # idempotent


def test_rebuild_repairs_a_lost_part_and_sets_unreadable_parts_aside(sim, tmp_path) -> None:
    sim.configure(fast=True)
    settings = engine_settings(sim, shard_size=2)
    out = tmp_path / "out"
    render_all(write_manifest(tmp_path / "m.parquet"), str(out), settings)
    store = LocalStore(out)
    original = succeeded(store)
    lost = next(k for k in catalog.part_keys(store) if "shard-00001" in k)
    lost_rows = pq.read_table(out / lost).num_rows
    store.delete(lost)
    (out / "catalog" / "part-torn.parquet").write_bytes(b"PAR1 half a part")

    result = rebuild(store)
    assert result.quarantined == [store.uri("catalog/part-torn.parquet")]
    assert (out / "quarantine" / "catalog" / "part-torn.parquet").exists()
    assert result.rows_added == lost_rows
    assert succeeded(store) == original
    assert pq.read_table(out / "catalog").num_rows == catalog.read_catalog(store).num_rows


def test_compact_merges_parts_of_finished_runs_without_changing_rows(sim, tmp_path) -> None:
    sim.configure(fast=True)
    settings = engine_settings(sim, shard_size=2)
    out = tmp_path / "out"
    manifest = write_manifest(tmp_path / "m.parquet")
    render_all(manifest, str(out), settings)
    render_all(manifest, str(out), settings)  # a second, all-deduplicated run
    store = LocalStore(out)
    before = Counter(map(repr, catalog.read_catalog(store).to_pylist()))
    parts = catalog.part_keys(store)
    assert len(parts) > 3

    result = compact(store, max_rows=10)
    assert result.merged_parts == len(parts)
    assert len(result.new_parts) == -(-sum(before.values()) // 10)
    assert Counter(map(repr, catalog.read_catalog(store).to_pylist())) == before
    glob = f"{out}/catalog/*.parquet"
    count = duckdb.connect().execute("select count(*) from read_parquet(?)", [glob])
    assert count.fetchone() == (sum(before.values()),)
    assert compact(store).merged_parts == len(result.new_parts)  # merges its own output
    assert len(catalog.part_keys(store)) == 1


def test_an_interrupted_compaction_never_shows_rows_twice_and_is_finished_later(
    sim, tmp_path
) -> None:
    sim.configure(fast=True)
    out = tmp_path / "out"
    render_all(write_manifest(tmp_path / "m.parquet"), str(out), engine_settings(sim, shard_size=2))
    store = LocalStore(out)
    rows = catalog.read_catalog(store).num_rows
    parts = catalog.part_keys(store)

    # Crash after the merged part was written, before the old parts were deleted.
    _marker, new_keys, _ = write_merged(store, parts)
    assert catalog.part_keys(store) == new_keys
    assert catalog.read_catalog(store).num_rows == rows
    # Crash while writing: a marker whose parts are not all there hides the partial ones.
    store.delete(new_keys[0])
    assert catalog.part_keys(store) == parts
    assert catalog.read_catalog(store).num_rows == rows

    result = compact(store)
    assert result.recovered == 1
    assert catalog.read_catalog(store).num_rows == rows
    assert list(store.list(COMPACTION_PREFIX)) == []


def test_compact_leaves_parts_of_unfinished_runs_alone(sim, tmp_path) -> None:
    from qwbatch.runs import runner

    sim.configure(fast=True)
    settings = engine_settings(sim, shard_size=2)
    out = tmp_path / "out"
    render_all(write_manifest(tmp_path / "a.parquet"), str(out), settings)
    # A second run that planned but never rendered (crashed): its plan part must stay.
    unfinished = runner.prepare(
        str(write_manifest(tmp_path / "b.parquet", rows=4)), str(out), settings=settings
    )
    store = LocalStore(out)
    result = compact(store)
    assert result.skipped_parts == 1
    assert any(unfinished.plan.run_id in k for k in catalog.part_keys(store))


@pytest.mark.parametrize("command", ["rebuild", "compact"])
def test_catalog_commands(sim, tmp_path, command: str) -> None:
    sim.configure(fast=True)
    out = tmp_path / "out"
    render_all(write_manifest(tmp_path / "m.parquet"), str(out), engine_settings(sim, shard_size=2))
    result = CliRunner().invoke(app, ["catalog", command, str(out)])
    assert result.exit_code == 0, result.output
    expected = "0 rows added" if command == "rebuild" else "3 parts (7 rows) merged into 1"
    assert expected in result.output
