"""The manifest reader as a stream (batches, early close), the errors that refuse a whole
manifest, and the rejects file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from manifest_helpers import DEFAULT, read_all, write
from support import TABLE

from qwbatch.core.errors import ConfigError, ManifestError
from qwbatch.manifest import (
    REJECTS_SCHEMA,
    Reject,
    read_manifest,
    rejects_table,
)

# --------------------------------------------------------------------------- streaming


def test_batches_stream_and_give_the_same_result(tmp_path: Path) -> None:
    rows = 35
    path = write(
        tmp_path / "m.parquet",
        {
            "id": [f"r{i:02d}" for i in range(rows)],
            "prompt": [f"prompt {i}" if i % 7 else "" for i in range(rows)],
            "n": pa.array([1 + i % 3 for i in range(rows)], pa.int32()),
        },
        row_group_size=10,
    )
    assert pq.ParquetFile(path).metadata.num_row_groups == 4

    reader = read_manifest(path, table=TABLE, default_model=DEFAULT, batch_size=8)
    batches = list(reader)
    assert len(batches) >= 5
    assert [b.first_row for b in batches] == [
        sum(b.num_rows for b in batches[:i]) for i in range(len(batches))
    ]
    assert all(b.num_rows <= 8 for b in batches)
    assert reader.summary.batches == len(batches)
    assert reader.summary.rows_read == rows

    whole_requests, whole_rejects, _ = read_all(path)
    assert [r for b in batches for r in b.requests] == whole_requests
    assert [r for b in batches for r in b.rejects] == whole_rejects
    assert [r.row_number for r in whole_rejects] == [0, 7, 14, 21, 28]
    assert len(whole_requests) == 30


def test_an_empty_manifest(tmp_path: Path) -> None:
    table = pa.table({"id": pa.array([], pa.string()), "prompt": pa.array([], pa.string())})
    pq.write_table(table, tmp_path / "m.parquet")
    requests, rejects, reader = read_all(tmp_path / "m.parquet")
    assert (requests, rejects, reader.summary.rows_read) == ([], [], 0)


def test_reader_closes_early(tmp_path: Path) -> None:
    path = write(tmp_path / "m.parquet", {"id": ["a", "b", "c"], "prompt": ["x", "y", "z"]})
    with read_manifest(path, table=TABLE, default_model=DEFAULT, batch_size=1) as reader:
        first = next(reader)
    assert first.requests[0].row_id == "a"
    assert list(reader) == []


# --------------------------------------------------------------------------- manifest errors


@pytest.mark.parametrize("missing", ["id", "prompt"])
def test_missing_required_column(tmp_path: Path, missing: str) -> None:
    columns = {"id": ["a"], "prompt": ["x"], "mode": ["generate"]}
    del columns[missing]
    path = write(tmp_path / "m.parquet", columns)
    with pytest.raises(ManifestError, match=f"has no '{missing}' column; its columns: "):
        read_all(path)


@pytest.mark.parametrize(
    ("column", "value", "words"),
    [
        ("prompt", pa.array([5], pa.int64()), "column 'prompt' has type int64; expected a string"),
        ("n", pa.array([True]), "column 'n' has type bool; expected an integer column"),
        ("input_images", pa.array([[1]]), "column 'input_images' has type list<element: int64>"),
        ("tags", pa.array([3.5]), "column 'tags' has type double"),
        ("id", pa.array([1.0]), "column 'id' has type double"),
    ],
)
def test_unusable_column_type(tmp_path: Path, column: str, value: pa.Array, words: str) -> None:
    columns: dict[str, Any] = {"id": ["a"], "prompt": ["x"], column: value}
    with pytest.raises(ManifestError, match=re.escape(words)):
        read_all(write(tmp_path / "m.parquet", columns))


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    path.write_text("id,prompt\na,x\n")
    with pytest.raises(ManifestError, match="cannot read manifest"):
        read_all(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read manifest"):
        read_all(tmp_path / "nope.parquet")


def test_an_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no Parquet files"):
        read_all(tmp_path)


def test_unknown_default_model_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path / "m.parquet", {"id": ["a"], "prompt": ["x"]})
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        read_manifest(path, table=TABLE, default_model="nope")


# --------------------------------------------------------------------------- rejects file


def test_rejects_table(tmp_path: Path) -> None:
    rejects = [
        Reject(3, "a", "n", "n must be at least 1, got 0"),
        Reject(9, None, "id", "id is missing"),
    ]
    table = rejects_table(rejects)
    assert table.schema == REJECTS_SCHEMA
    assert table.to_pylist() == [
        {"row_number": 3, "id": "a", "column": "n", "reason": "n must be at least 1, got 0"},
        {"row_number": 9, "id": None, "column": "id", "reason": "id is missing"},
    ]
    pq.write_table(table, tmp_path / "rejects.parquet")
    assert pq.read_table(tmp_path / "rejects.parquet").num_rows == 2
    assert rejects_table([]).num_rows == 0
