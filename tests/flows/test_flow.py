"""End to end: the render-manifest flow under a real Prefect server, against the simulator
over HTTP, into a local folder and into S3 (moto's server over HTTP)."""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import boto3
import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest
from PIL import Image
from support import KEY

from flows.render import render_manifest
from qwbatch.core.errors import ConfigError
from qwbatch.plan import shard_codec

DEMO = Path(__file__).parents[2] / "manifests" / "demo.parquet"


def _catalog(out: Path):
    return pq.read_table(out / "catalog").to_pylist()


@pytest.mark.slow
def test_demo_manifest_renders_end_to_end_and_rerun_pays_nothing(
    prefect_server, fast_sim_env, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    summary = render_manifest(manifest=str(DEMO), out=str(out))

    rows = _catalog(out)
    manifest_rows = pq.read_table(DEMO).num_rows
    assert summary.rows_read == manifest_rows
    assert summary.rejected == 1
    assert summary.failed == 0
    ledger = fast_sim_env.ledger()
    # Every stored image was billed once, and only once.
    succeeded = [r for r in rows if r["status"] == "succeeded"]
    assert ledger["billed_images"] == len(succeeded) == summary.billed_images
    assert summary.cost == pytest.approx(sum(r["cost"] for r in rows))

    # Each output opens and has the size its row says.
    for row in succeeded:
        path = Path(row["output_uri"].removeprefix("file://"))
        with Image.open(path) as img:
            img.load()
            assert img.format == "PNG"
            assert (img.width, img.height) == (row["width"], row["height"])
        if row["size"]:
            assert row["size"] == f"{row['width']}*{row['height']}"

    # The two duplicate rows: rendered once, both recorded with the same output.
    dup = {r["row_id"]: r for r in rows if r["row_id"] in ("dup-a", "dup-b")}
    assert {dup["dup-a"]["status"], dup["dup-b"]["status"]} == {"succeeded", "deduplicated"}
    assert dup["dup-a"]["output_uri"] == dup["dup-b"]["output_uri"]
    assert sum(r["cost"] for r in dup.values()) == pytest.approx(
        dup["dup-a"]["cost"] or dup["dup-b"]["cost"]
    )

    # The bad row is in the rejects file with its reason.
    rejects = pq.read_table(out / "rejects").to_pylist()
    assert [r["id"] for r in rejects] == ["too-big"]
    assert "4096" in rejects[0]["reason"]

    # The catalog is readable by DuckDB and polars too.
    con = duckdb.connect()
    count = con.execute("select count(*) from read_parquet(?)", [f"{out}/catalog/*.parquet"])
    assert count.fetchone() == (len(rows),)
    assert pl.read_parquet(f"{out}/catalog/*.parquet").height == len(rows)

    # A second run pays for nothing and says so.
    billed_before = fast_sim_env.ledger()["billed_images"]
    again = render_manifest(manifest=str(DEMO), out=str(out))
    assert fast_sim_env.ledger()["billed_images"] == billed_before
    assert again.billed_images == 0
    assert again.requests == 0
    assert again.deduplicated == manifest_rows - 1
    assert any("no image was paid for" in line for line in again.lines())

    # The key appears nowhere: logs, catalog, rejects, summaries, object metadata sidecars.
    assert KEY not in caplog.text
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix in (".gz", ".zst"):  # shard files
                data = shard_codec.decompress(data)
            assert KEY.encode() not in data, path


@pytest.mark.slow
def test_render_into_s3_records_metadata_and_no_secrets(
    prefect_server,
    fast_sim_env,
    s3_bucket: str,
    s3_settings,
    monkeypatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("QWBATCH_S3_ENDPOINT_URL", s3_settings.s3_endpoint_url)
    monkeypatch.setenv("QWBATCH_S3_REGION", "us-east-1")
    monkeypatch.setenv("QWBATCH_S3_ADDRESSING_STYLE", "path")
    manifest = tmp_path / "m.parquet"
    shutil.copy(DEMO, manifest)
    out = f"s3://{s3_bucket}/renders/nightly"

    summary = render_manifest(manifest=str(manifest), out=out, shard_size=5)
    assert summary.shards >= 3
    assert summary.failed == 0

    s3 = boto3.client("s3", endpoint_url=s3_settings.s3_endpoint_url, region_name="us-east-1")
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
        for o in page.get("Contents", [])
    ]
    assert all(k.startswith("renders/nightly/") for k in keys)
    # Thumbnails and the run's contact sheet live in the bucket too.
    sheet_key = f"renders/nightly/runs/{summary.run_id}/contact-sheet.png"
    assert summary.contact_sheet_uri == f"s3://{s3_bucket}/{sheet_key}"
    assert sheet_key in keys
    assert sum(k.startswith("renders/nightly/thumbs/") for k in keys) == summary.images_stored
    parts = [k for k in keys if k.startswith("renders/nightly/catalog/")]
    rows = [
        row
        for k in parts
        for row in pq.read_table(
            io.BytesIO(s3.get_object(Bucket=s3_bucket, Key=k)["Body"].read())
        ).to_pylist()
    ]
    succeeded = [r for r in rows if r["status"] == "succeeded"]
    assert len(succeeded) == summary.images_stored > 0
    for row in succeeded:
        key = row["output_uri"].removeprefix(f"s3://{s3_bucket}/")
        head = s3.head_object(Bucket=s3_bucket, Key=key)
        meta = head["Metadata"]
        assert meta["request-key"] == row["request_key"]
        assert meta["model"] == row["model"]
        assert meta["seed"] == str(row["seed"])
        assert head["ContentType"] == "image/png"
        body = s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        with Image.open(io.BytesIO(body)) as img:
            assert (img.width, img.height) == (row["width"], row["height"])
        assert KEY not in json.dumps(meta)
    for row in rows:
        assert KEY not in json.dumps(row, default=str)
    assert KEY not in caplog.text


@pytest.mark.slow
def test_a_deployment_run_refuses_relative_paths_naming_its_folder(
    prefect_server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # What a worker's run sees: a deployment id, and a temporary working folder.
    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__ID", "7f0c1e52-0000-4000-8000-000000000000")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as refused:
        render_manifest(manifest="manifests/demo.parquet", out="out")
    assert "manifest 'manifests/demo.parquet' is a relative path" in refused.value.message
    assert str(tmp_path) in refused.value.message
    assert not (tmp_path / "out").exists()
