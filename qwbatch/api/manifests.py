"""Manifests given as data: a pyarrow Table, a pandas or polars DataFrame → a Parquet file.

The planner reads manifests from files, and a run's identity (resume, dedup, fingerprints)
is the manifest file's name and bytes. A manifest given as a table is therefore written
once to a Parquet file named by the hash of its bytes, so the same table given twice is
the same file and the same run, exactly as if the user had saved it first:

- into ``OUT/manifests/table-<hash>.parquet`` when there is an ``OUT`` (a local folder or
  ``s3://``; see :func:`qwbatch.storage.layout.table_manifest_key`);
- into a temporary folder otherwise (``estimate`` without ``out``, ``validate``), removed
  when the call returns.

Tables are accepted by the Arrow PyCapsule interface (``__arrow_c_stream__``: polars,
pandas 2.2+, DuckDB relations, …), or by duck typing (``to_arrow()``, pandas'
``pa.Table.from_pandas``); neither pandas nor polars is imported here. Text columns in
Arrow's large or view layouts become plain strings, dictionary columns (pandas categories)
their values, and schema metadata (pandas' index description) is dropped, so the bytes
depend on the data alone.

Edit inputs named by relative paths in such a manifest are looked up in
``QWBATCH_INPUT_ROOTS`` (the file's own folder is not where the user's files are): use
absolute paths or URIs there.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeAlias

import pyarrow as pa
import pyarrow.parquet as pq

from qwbatch.core.errors import ManifestError
from qwbatch.core.settings import Settings
from qwbatch.storage.layout import table_manifest_key
from qwbatch.storage.stores import LocalStore, open_store

#: What the API takes as a manifest: a path or URI (``str``/``os.PathLike``), or a table
#: (``pyarrow.Table``, a pandas or polars DataFrame, anything with ``__arrow_c_stream__``).
ManifestLike: TypeAlias = "str | os.PathLike[str] | pa.Table | Any"

#: Rows per row group of a written manifest (the reader's blocks are about this size).
_ROW_GROUP = 64 * 1024


def is_path(manifest: object) -> bool:
    """Whether ``manifest`` names a file, folder or URI rather than holding rows."""
    return isinstance(manifest, str | os.PathLike)


def to_arrow(manifest: object) -> pa.Table:
    """The rows of a table-like ``manifest`` as a pyarrow Table, in plain Arrow types.

    ManifestError names the type when it is neither a table nor a path.
    """
    table: pa.Table
    if isinstance(manifest, pa.Table):
        table = manifest
    elif isinstance(manifest, pa.RecordBatch):
        table = pa.Table.from_batches([manifest])
    elif isinstance(manifest, pa.RecordBatchReader):
        table = manifest.read_all()
    elif hasattr(manifest, "__arrow_c_stream__"):
        table = pa.table(manifest)
    elif hasattr(manifest, "to_arrow"):  # polars before the PyCapsule interface
        table = manifest.to_arrow()
    elif type(manifest).__module__.split(".")[0] == "pandas":
        table = pa.Table.from_pandas(manifest, preserve_index=False)
    else:
        raise ManifestError(
            f"a manifest is a path, an s3:// URI or a table (pyarrow, pandas, polars), "
            f"not {type(manifest).__name__}"
        )
    return _plain(table)


def _plain(table: pa.Table) -> pa.Table:
    """``table`` with plain string/binary/list layouts and no schema metadata."""
    fields, columns = [], []
    for field, column in zip(table.schema, table.columns, strict=True):
        kind = _plain_type(field.type)
        if kind != field.type:
            column = column.cast(kind)
        fields.append(pa.field(field.name, kind, nullable=field.nullable))
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _plain_type(kind: pa.DataType) -> pa.DataType:
    if pa.types.is_dictionary(kind):
        return _plain_type(kind.value_type)
    if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return pa.string()
    if pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
        return pa.binary()
    if pa.types.is_large_list(kind) or pa.types.is_list_view(kind):
        return pa.list_(_plain_type(kind.value_type))
    if pa.types.is_list(kind):
        return pa.list_(_plain_type(kind.value_type))
    return kind


def _write(table: pa.Table, folder: Path) -> Path:
    """Write ``table`` into ``folder`` as ``table-<hash>.parquet`` (atomic); its path."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".qwtmp-", suffix=".parquet", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        pq.write_table(table, tmp, row_group_size=_ROW_GROUP, compression="zstd")
        digest = hashlib.sha256()
        with tmp.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        final = folder / Path(table_manifest_key(digest.hexdigest())).name
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


@contextmanager
def manifest_uri(manifest: ManifestLike, *, out: str | None, settings: Settings) -> Iterator[str]:
    """The path or URI the planner reads for ``manifest`` while the block runs.

    A path or URI is passed through. A table is written as described in the module
    docstring: under ``out`` when given (kept: a later call resumes from it), else in a
    temporary folder removed on exit.
    """
    if is_path(manifest):
        yield os.fspath(manifest)
        return
    table = to_arrow(manifest)
    with tempfile.TemporaryDirectory(prefix="qwbatch-manifest-") as scratch:
        written = _write(table, Path(scratch))
        if out is None:
            yield str(written)
            return
        store = open_store(out, settings)
        key = table_manifest_key(written.stem.removeprefix("table-"))
        if isinstance(store, LocalStore):
            local = store.root / key
            local.parent.mkdir(parents=True, exist_ok=True)
            os.replace(written, local)
            yield str(local)
            return
        if not store.exists(key):
            store.put(key, written.read_bytes(), content_type="application/x-parquet")
        yield store.uri(key)
