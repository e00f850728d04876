"""Rebuilding the catalog from the store: every output image describes itself.

Each output object carries its request in its metadata (see :mod:`qwbatch.storage.metadata`), so
``rebuild`` can give every stored image a catalog row again: after a catalog folder was
lost, a part deleted, or a crash between an upload and its part. It adds one ``succeeded``
row (at the image's unit price, with its original run id) for each image that no
``succeeded`` row names, in one new part; running it again adds nothing. Catalog parts that
cannot be read are first moved to ``quarantine/catalog/`` so no reader chokes on them.

Only images can be rebuilt: rows of requests that ended without one (failed, moderated …)
live in the catalog alone.
"""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qwbatch.catalog import table as catalog
from qwbatch.core.errors import ObjectNotFoundError
from qwbatch.core.types import CatalogRecord
from qwbatch.storage import layout
from qwbatch.storage.metadata import record_from_metadata
from qwbatch.storage.stores import ObjectStore


@dataclass(slots=True)
class RebuildResult:
    """What a rebuild found and did. ``unusable`` lists images whose metadata cannot make a
    row (not written by qwbatch, or written before metadata carried the request)."""

    images: int = 0
    rows_added: int = 0
    part_uri: str | None = None
    quarantined: list[str] = field(default_factory=list)
    unusable: list[str] = field(default_factory=list)


def rebuild(store: ObjectStore, *, workers: int = 16) -> RebuildResult:
    """Give every stored output image a catalog row; see the module docstring."""
    result = RebuildResult(quarantined=quarantine_unreadable(store))
    covered = _covered_uris(store)
    keys = [k for k in store.list(layout.IMAGES_PREFIX) if k.endswith(".png")]
    result.images = len(keys)
    missing = [k for k in keys if store.uri(k) not in covered]
    docs: dict[str, dict[str, Any] | None] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        records = list(pool.map(lambda key: _record(store, key, docs), missing))
    found: list[CatalogRecord] = []
    for key, record in zip(missing, records, strict=True):
        if record is None:
            result.unusable.append(store.uri(key))
        else:
            found.append(record)
    found.sort(key=lambda r: (r.run_id, r.request_key, r.image_index or 0))
    result.rows_added = len(found)
    result.part_uri = catalog.write_part(store, found, run_id="rebuild", label="images")
    return result


def quarantine_unreadable(store: ObjectStore) -> list[str]:
    """Move catalog parts that are not readable Parquet to ``quarantine/``; their old URIs."""
    moved = []
    for key in catalog.part_keys(store):
        data = store.get(key)
        try:
            pq.read_metadata(io.BytesIO(data))
        except (OSError, pa.ArrowException):
            store.put(layout.quarantine_key(key), data, content_type="application/octet-stream")
            store.delete(key)
            moved.append(store.uri(key))
    return moved


def _covered_uris(store: ObjectStore) -> set[str]:
    covered: set[str] = set()
    for table in catalog.iter_parts(store, ("status", "output_uri")):
        rows = table.filter(pc.equal(table["status"], "succeeded"))
        covered.update(uri for uri in rows["output_uri"].to_pylist() if uri)
    return covered


def _record(
    store: ObjectStore, key: str, docs: dict[str, dict[str, Any] | None]
) -> CatalogRecord | None:
    info = store.head(key)
    if info is None:
        return None
    doc = None
    if info.metadata.get("request-doc") == layout.REQUEST_DOC:
        folder = key.rsplit("/", 1)[0]
        if folder not in docs:
            docs[folder] = _load_doc(store, f"{folder}/{layout.REQUEST_DOC}")
        doc = docs[folder]
    return record_from_metadata(
        info.metadata, output_uri=store.uri(key), size_bytes=info.size, doc=doc
    )


def _load_doc(store: ObjectStore, key: str) -> dict[str, Any] | None:
    try:
        body = json.loads(store.get(key))
    except (ObjectNotFoundError, ValueError):
        return None
    return body if isinstance(body, dict) else None
