"""Rendering rejected images again: the manifest with a new seed for each rejected row.

``qwbatch run MANIFEST -o DEST --rerender-rejected`` reads the review decisions recorded in
DEST (:mod:`qwbatch.catalog.review`). A manifest row whose request (as the manifest asks it
now) has an image whose newest decision rejects it gets a new seed; every other row is left
as it is. The run then renders those rows as new requests (billed, counted and held to the
budget like any other) and deduplicates the rest, which cost nothing.

The new seed is derived from the rejected request's key, so the same decisions give the same
seeds: running the command twice renders once. A rerender that is rejected in turn has a new
key, hence another seed next time. A request with several images (``n``) is rendered again
whole.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from qwbatch.catalog import review
from qwbatch.core.errors import ConfigError
from qwbatch.core.keys import SEED_MAX
from qwbatch.core.settings import Settings
from qwbatch.manifest import read_manifest
from qwbatch.manifest.files import is_remote
from qwbatch.storage.stores import ObjectStore


def new_seed(request_key: str) -> int:
    """The seed a rejected request is rendered again with, in [0, 2147483647]."""
    digest = hashlib.sha256(f"qwbatch-rerender:{request_key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & SEED_MAX


def rejected_seeds(
    manifest: str, store: ObjectStore, settings: Settings, *, stage: Any = None
) -> dict[str, int]:
    """Row id → new seed, for each row of ``manifest`` whose current request has a rejected
    image in ``store`` (``stage``: the edit-input resolver, as ``qwbatch validate`` uses)."""
    from qwbatch.runs.runner import model_table  # the runner's table: the same as a run's

    rejected = review.rejected_requests(review.read_decisions(store))
    if not rejected:
        return {}
    reader = read_manifest(
        manifest,
        table=model_table(settings),
        default_model=settings.default_model,
        resolve_input=stage,
        settings=settings,
    )
    seeds: dict[str, int] = {}
    for batch in reader:
        for request in batch.requests:
            if (request.row_id, request.request_key) in rejected:
                seeds[request.row_id] = new_seed(request.request_key)
    return seeds


def reseeded(manifest: str, seeds: dict[str, int]) -> pa.Table:
    """The rows of the local Parquet ``manifest`` with ``seeds`` (row id → seed) in place."""
    if is_remote(manifest):
        raise ConfigError("--rerender-rejected reads a local manifest; copy it here first")
    table = pq.read_table(Path(manifest))
    ids = [None if v is None else str(v) for v in table["id"].to_pylist()]
    old = table["seed"].to_pylist() if "seed" in table.column_names else [None] * len(ids)
    integer = "seed" not in table.column_names or pa.types.is_integer(table["seed"].type)
    values: list[Any] = [
        seeds[i] if i in seeds else (v if integer else _seed_text(v))
        for i, v in zip(ids, old, strict=True)
    ]
    column = pa.array(values, pa.int64() if integer else pa.string())
    if "seed" in table.column_names:
        return table.set_column(table.column_names.index("seed"), "seed", column)
    return table.append_column("seed", column)


def _seed_text(value: Any) -> str | None:
    """A seed cell of a non-integer column, as text the manifest reader reads the same."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
