"""Duplicate ids: which ids a manifest repeats, found exactly before its rows are checked.

Ids are unique per manifest: a later row whose ``id`` was already seen is rejected as a
duplicate (``qwbatch.manifest.row_checker``). Repeated ids are found by a first pass over
the ``id`` column alone, so memory for them is one Arrow string per row during that pass
and only the repeated ids afterwards. A reader of a later part of the manifest (the second
process of a split plan) is handed :class:`DuplicateIds` with the row each repeated id is
first seen at, so it refuses a repeat as a whole read does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from qwbatch.core.errors import ManifestError
from qwbatch.manifest.columns import decoded
from qwbatch.manifest.files import ManifestFile
from qwbatch.manifest.schema import open_parquet


@dataclass(frozen=True, slots=True)
class DuplicateIds:
    """Ids that occur more than once in a manifest (``candidates``) and, when known, the row
    each occurs at first (``first_rows``): what a reader of a later part of the manifest
    needs to refuse a repeat of an id first seen before its part, as a whole read does."""

    candidates: frozenset[str] = frozenset()
    first_rows: dict[str, int] = field(default_factory=dict)


def _id_bytes(array: pa.Array) -> pa.Array:
    """An id column as large_binary (for exact counting across files of different types)."""
    array = decoded(array)
    if pa.types.is_integer(array.type):
        array = pc.cast(array, pa.large_string())
    return pc.cast(array, pa.large_binary())


def duplicate_candidates(files: list[ManifestFile]) -> frozenset[str]:
    """Ids that occur more than once in the manifest (first pass, ``id`` column only)."""
    chunks: list[pa.Array] = []
    for path in files:
        parquet = open_parquet(path)
        try:
            column = parquet.read(columns=["id"]).column("id")
        except (OSError, pa.ArrowException) as exc:
            raise ManifestError(f"cannot read manifest {path}: {exc}") from exc
        finally:
            parquet.close()
        chunks.extend(_id_bytes(chunk) for chunk in column.chunks)
    if not chunks:
        return frozenset()
    counts = pc.value_counts(pa.chunked_array(chunks, pa.large_binary()))
    repeated = pc.filter(counts, pc.greater(counts.field("counts"), 1)).field("values")
    found = frozenset(v.decode("utf-8", "replace") for v in repeated.to_pylist() if v is not None)
    del chunks, counts, repeated
    # The pass peaks at ~100 bytes per row (ids, hash table); hand that back to the OS
    # rather than keep it in Arrow's allocator for the rest of the read.
    pa.default_memory_pool().release_unused()
    return found


def first_rows(files: list[ManifestFile], candidates: frozenset[str]) -> dict[str, int]:
    """The row each of ``candidates`` first occurs at (a second pass over the ``id`` column;
    none when there is no repeated id)."""
    first: dict[str, int] = {}
    if not candidates:
        return first
    wanted = pa.array(sorted(candidates), pa.string()).cast(pa.large_binary())
    offset = 0
    for path in files:
        parquet = open_parquet(path)
        try:
            column = parquet.read(columns=["id"]).column("id")
        except (OSError, pa.ArrowException) as exc:
            raise ManifestError(f"cannot read manifest {path}: {exc}") from exc
        finally:
            parquet.close()
        for chunk in column.chunks:
            ids = _id_bytes(chunk)
            for at in pc.indices_nonzero(pc.is_in(ids, value_set=wanted)).to_pylist():
                rid = ids[at].as_py().decode("utf-8", "replace")
                first.setdefault(rid, offset + at)
            offset += len(chunk)
    return first
