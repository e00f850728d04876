"""Manifests for the manifest reader's tests: write columns as Parquet, read them back whole.

The ``images`` fixture (input files next to a manifest) is in ``tests/manifest/conftest.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from support import TABLE

from qwbatch.core.model_table import ModelTable
from qwbatch.core.types import RenderRequest
from qwbatch.manifest import ManifestReader, Reject, read_manifest

DEFAULT = "qwen-image-2.0"


def write(path: Path, columns: dict[str, Any], **options: Any) -> Path:
    """Write ``columns`` (lists or Arrow arrays) as a Parquet manifest at ``path``."""
    pq.write_table(pa.table(columns), path, **options)
    return path


def read_all(
    path: Path, *, table: ModelTable = TABLE, **options: Any
) -> tuple[list[RenderRequest], list[Reject], ManifestReader]:
    reader = read_manifest(path, table=table, default_model=DEFAULT, **options)
    requests, rejects = reader.collect()
    return requests, rejects, reader


def one_row(tmp_path: Path, **cells: Any) -> tuple[list[RenderRequest], list[Reject]]:
    """Read a one-row manifest; ``cells`` override id "r1" / prompt "a red apple"."""
    columns: dict[str, Any] = {"id": ["r1"], "prompt": ["a red apple"]}
    for name, value in cells.items():
        columns[name] = value if isinstance(value, pa.Array) else [value]
    requests, rejects, _ = read_all(write(tmp_path / "one.parquet", columns))
    return requests, rejects


def rejected(tmp_path: Path, **cells: Any) -> Reject:
    """The single reject of a one-row manifest that must be refused."""
    requests, rejects = one_row(tmp_path, **cells)
    assert requests == []
    assert len(rejects) == 1, rejects
    return rejects[0]


def accepted(tmp_path: Path, **cells: Any) -> RenderRequest:
    requests, rejects = one_row(tmp_path, **cells)
    assert rejects == []
    assert len(requests) == 1
    return requests[0]
