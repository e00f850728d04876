"""Manifests on S3 (moto's server over HTTP): read in ranges, streamed, pinned to one version."""

from __future__ import annotations

import io
import secrets
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from qwbatch.cli import app
from qwbatch.core.errors import ManifestError, StorageError
from qwbatch.core.model_table import ModelTable
from qwbatch.manifest.files import S3_READ_BUFFER_BYTES, manifest_files
from qwbatch.manifest.reader import read_manifest

DEMO = Path(__file__).parents[2] / "manifests" / "demo.parquet"
TABLE = ModelTable.load()


def _put(s3_client, bucket: str, key: str, table: pa.Table, **write_options) -> int:
    sink = io.BytesIO()
    pq.write_table(table, sink, **write_options)
    s3_client.put_object(Bucket=bucket, Key=key, Body=sink.getvalue())
    return len(sink.getvalue())


def _collect(location, settings):
    reader = read_manifest(
        location, table=TABLE, default_model="qwen-image-2.0", batch_size=7, settings=settings
    )
    requests, rejects = reader.collect()
    return reader, requests, rejects


def test_s3_manifest_reads_like_the_local_file(s3_client, s3_bucket, s3_settings) -> None:
    s3_client.upload_file(str(DEMO), s3_bucket, "manifests/demo.parquet")
    uri = f"s3://{s3_bucket}/manifests/demo.parquet"

    reader, requests, rejects = _collect(uri, s3_settings)
    _, local_requests, local_rejects = _collect(DEMO, s3_settings)

    assert [r.request_key for r in requests] == [r.request_key for r in local_requests]
    assert [(r.row_number, r.reason) for r in rejects] == [
        (r.row_number, r.reason) for r in local_rejects
    ]
    assert reader.summary.path == uri
    assert reader.summary.batches == -(-pq.read_metadata(DEMO).num_rows // 7)


def test_s3_folder_reads_parts_in_key_order_and_skips_markers(
    s3_client, s3_bucket, s3_settings
) -> None:
    for index in range(3):
        part = pa.table({"id": [f"p{index}-{i}" for i in range(4)], "prompt": ["a cat"] * 4})
        _put(s3_client, s3_bucket, f"m/part-{index}.parquet", part)
    s3_client.put_object(Bucket=s3_bucket, Key="m/_SUCCESS", Body=b"")
    s3_client.put_object(Bucket=s3_bucket, Key="m/.part-0.parquet.crc", Body=b"x")
    _put(s3_client, s3_bucket, "m/nested/other.parquet", pa.table({"id": ["x"], "prompt": ["y"]}))

    for location in (f"s3://{s3_bucket}/m/", f"s3://{s3_bucket}/m"):
        _, requests, rejects = _collect(location, s3_settings)
        assert rejects == []
        assert [r.row_id for r in requests] == [f"p{p}-{i}" for p in range(3) for i in range(4)]
        assert [r.row_number for r in requests] == list(range(12))


def test_missing_s3_manifest_is_a_clear_error(s3_bucket, s3_settings) -> None:
    with pytest.raises(ManifestError, match="no such object, and no Parquet files under it"):
        read_manifest(
            f"s3://{s3_bucket}/nope.parquet",
            table=TABLE,
            default_model="qwen-image-2.0",
            settings=s3_settings,
        )


def test_missing_bucket_is_a_clear_error(s3_settings) -> None:
    with pytest.raises(ManifestError, match=r"cannot read manifest s3://qwbatch-no-such-bucket"):
        manifest_files("s3://qwbatch-no-such-bucket/m/", settings=s3_settings)


def test_edit_rows_of_an_s3_manifest_are_rejected_with_a_reason(
    s3_client, s3_bucket, s3_settings
) -> None:
    table = pa.table(
        {
            "id": ["gen", "edit-relative", "edit-absolute"],
            "prompt": ["a cat", "make it blue", "make it red"],
            "mode": ["generate", "edit", "edit"],
            "model": [None, "qwen-image-edit", "qwen-image-edit"],
            "input_images": [None, ["inputs/cat.png"], ["/data/cat.png"]],
        }
    )
    _put(s3_client, s3_bucket, "edits/m.parquet", table)

    _, requests, rejects = _collect(f"s3://{s3_bucket}/edits/m.parquet", s3_settings)

    assert [r.row_id for r in requests] == ["gen"]
    assert [(r.row_id, r.column) for r in rejects] == [
        ("edit-relative", "input_images"),
        ("edit-absolute", "input_images"),
    ]
    for reject in rejects:
        assert "inputs of a manifest on object storage" in reject.reason
        assert f"s3://{s3_bucket}/edits/m.parquet" in reject.reason
        assert "not supported yet" in reject.reason


def _big_manifest(rows: int) -> pa.Table:
    # Random prompts do not compress: the file is about as large as its text.
    return pa.table(
        {
            "id": [f"r{i}" for i in range(rows)],
            "prompt": [secrets.token_hex(128) for _ in range(rows)],
        }
    )


def test_reading_streams_ranges_instead_of_downloading_the_file(
    s3_client, s3_bucket, s3_settings
) -> None:
    size = _put(s3_client, s3_bucket, "big.parquet", _big_manifest(40_000), row_group_size=4_000)
    assert size > 2.5 * S3_READ_BUFFER_BYTES  # or the test proves nothing
    fetched: list[int] = []
    s3_client.meta.events.register(
        "after-call.s3.GetObject",
        lambda parsed, **_: fetched.append(parsed["ContentLength"]),
    )

    (file,) = manifest_files(f"s3://{s3_bucket}/big.parquet", s3_client=s3_client)
    batches = file.open().iter_batches(batch_size=1_000)
    first = next(batches)

    assert first.num_rows == 1_000
    assert 0 < sum(fetched) < size / 2
    rest = sum(batch.num_rows for batch in batches)
    assert first.num_rows + rest == 40_000


def test_a_manifest_replaced_mid_read_fails_instead_of_mixing_versions(
    s3_client, s3_bucket, s3_settings
) -> None:
    _put(s3_client, s3_bucket, "m.parquet", _big_manifest(40_000), row_group_size=4_000)
    (file,) = manifest_files(f"s3://{s3_bucket}/m.parquet", s3_client=s3_client)
    batches = file.open().iter_batches(batch_size=1_000)
    next(batches)

    _put(s3_client, s3_bucket, "m.parquet", _big_manifest(40_000), row_group_size=4_000)

    with pytest.raises(StorageError, match="changed while it was being read"):
        for _ in batches:
            pass


def test_cli_validate_reads_an_s3_manifest(
    s3_client, s3_bucket, s3_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_client.upload_file(str(DEMO), s3_bucket, "demo.parquet")
    monkeypatch.setenv("QWBATCH_S3_ENDPOINT_URL", s3_settings.s3_endpoint_url)
    monkeypatch.setenv("QWBATCH_S3_ADDRESSING_STYLE", "path")

    result = CliRunner().invoke(app, ["validate", f"s3://{s3_bucket}/demo.parquet"])

    assert result.exit_code == 1, result.output
    assert "23 valid rows, 1 rejected" in result.output
    assert "too-big" in result.output
