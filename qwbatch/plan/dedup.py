"""Deduplicated rows: manifest rows whose request the catalog already holds outputs for,
kept as Arrow columns while the plan streams (``catalog_keys.DedupRows``) and joined with
the catalog's outputs into the run's ``plan`` catalog part once the manifest is read."""

from __future__ import annotations

import pyarrow as pa

from qwbatch.catalog import key_set as catalog_keys
from qwbatch.catalog import table as catalog
from qwbatch.core.settings import Settings
from qwbatch.core.types import RenderRequest
from qwbatch.core.uris import recorded_uri
from qwbatch.storage.stores import ObjectStore

_EMPTY_LIST = pa.list_(pa.string())


def fast_dedup_rows(fast: pa.Table, keys: pa.Array, seeds: pa.Array, rows: list[int]) -> pa.Table:
    """REQUEST_SCHEMA rows of the fast rows at ``rows`` (``keys`` and ``seeds`` per fast row)."""
    chosen = pa.array(rows, pa.int64())
    picked = fast.take(chosen)
    count = len(rows)
    empty = pa.array([[]] * count, _EMPTY_LIST)
    return pa.table(
        {
            "order": picked["row_number"],
            "row_id": picked["row_id"],
            "request_key": keys.take(chosen),
            "mode": picked["mode"],
            "model": picked["model"],
            "prompt": picked["prompt"],
            "negative_prompt": picked["negative_prompt"],
            "size": picked["size"],
            "n": picked["n"],
            "seed": seeds.take(chosen),
            "tags": picked["tags"],
            "input_images": empty,
            "input_sha256": empty,
            "input_notes": empty,
            "target_size": pa.nulls(count, pa.string()),  # fast rows have none
        }
    )


def slow_dedup_rows(requests: list[RenderRequest]) -> pa.Table:
    """REQUEST_SCHEMA rows of requests the row checker made."""
    schema = catalog_keys.REQUEST_SCHEMA
    return pa.table(
        {
            "order": [r.row_number for r in requests],
            "row_id": [r.row_id for r in requests],
            "request_key": [r.request_key for r in requests],
            "mode": [r.mode for r in requests],
            "model": [r.model for r in requests],
            "prompt": [r.prompt for r in requests],
            "negative_prompt": [r.negative_prompt for r in requests],
            "size": [r.size for r in requests],
            "n": [r.n for r in requests],
            "seed": [r.seed for r in requests],
            "tags": [list(r.tags) for r in requests],
            "input_images": [[recorded_uri(u) for u in r.input_images] for r in requests],
            "input_sha256": [list(r.input_sha256) for r in requests],
            "input_notes": [list(r.input_notes) for r in requests],
            "target_size": [r.target_size for r in requests],
        },
        schema=schema,
    )


#: Rows of the deduplicated part encoded at a time (one row group each).
DEDUP_SLICE_ROWS = 32_768


def dedup_part(
    store: ObjectStore, rows: catalog_keys.DedupRows, *, run_id: str, settings: Settings
) -> bytes | None:
    """The deduplicated ``rows`` joined with the catalog's outputs: the bytes of the run's
    catalog part of them (None when there are none)."""
    joined = catalog_keys.dedup_rows(
        store,
        rows,
        run_id=run_id,
        currency=settings.currency(),
        slice_rows=DEDUP_SLICE_ROWS,
    )
    return catalog.encode_tables(joined, use_dictionary=list(catalog_keys.DICTIONARY_COLUMNS))


def put_dedup_part(
    store: ObjectStore, data: bytes | None, *, run_id: str, label: str = "plan"
) -> str | None:
    """Store :func:`dedup_part`'s bytes as ``part-<run_id>-<label>.parquet``; its URI."""
    if data is None:
        return None
    return catalog.put_part(store, data, run_id=run_id, label=label, unique=False)
