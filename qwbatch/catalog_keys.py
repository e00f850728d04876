"""The catalog as the plan sees it: which request keys already have outputs, compactly.

:func:`present_keys` reads the ``request_key`` and ``status`` columns alone and keeps, per
succeeded key, 16 bytes (the first 128 bits of the sha256; about 80 bytes a key with the set's
overhead, against ~1 KB for a row of ``catalog.existing_outputs``). Once the manifest has
been read, :func:`dedup_rows` reads the output columns again, only for the keys asked for,
and joins them to the deduplicated manifest rows in Arrow: the catalog rows
``plan.dedup_records`` would have made, with no Python object per row.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qwbatch.arrow_text import text_of
from qwbatch.catalog import SCHEMA, iter_parts, part_keys
from qwbatch.storage import ObjectStore

#: Catalog columns an existing output gives a deduplicated row.
OUTPUT_COLUMNS = ("image_index", "output_uri", "sha256", "bytes", "width", "height")
#: Columns of deduplicated rows nearly always distinct row to row (ids, keys, prompts,
#: seeds, outputs): not dictionary-encoded in the plan's catalog part (the rest are).
DISTINCT_COLUMNS = ("row_id", "request_key", "prompt", "seed", "output_uri", "sha256")
DICTIONARY_COLUMNS = tuple(f.name for f in SCHEMA if f.name not in DISTINCT_COLUMNS)
#: Columns of the deduplicated manifest rows handed to :func:`dedup_rows` (``order`` sorts
#: them back into manifest order).
REQUEST_SCHEMA = pa.schema(
    [
        ("order", pa.int64()),
        SCHEMA.field("row_id"),
        SCHEMA.field("request_key"),
        SCHEMA.field("mode"),
        SCHEMA.field("model"),
        SCHEMA.field("prompt"),
        SCHEMA.field("negative_prompt"),
        SCHEMA.field("size"),
        SCHEMA.field("n"),
        SCHEMA.field("seed"),
        SCHEMA.field("tags"),
        SCHEMA.field("input_images"),
        SCHEMA.field("input_sha256"),
        SCHEMA.field("input_notes"),
    ]
)


def short_key(key: str) -> bytes:
    """The 16 bytes standing for a request key (sha256 hex) in the plan's key sets."""
    return bytes.fromhex(key[:32])


def present_keys(store: ObjectStore | None) -> set[bytes]:
    """Short keys (:func:`short_key`) of every request with a succeeded row in the catalog."""
    found: set[bytes] = set()
    if store is None:
        return found
    fromhex = bytes.fromhex
    for part in iter_parts(store, ("request_key", "status")):
        succeeded = pc.equal(part["status"], "succeeded")
        if not pc.all(succeeded).as_py():
            part = part.filter(succeeded)
        for chunk in pc.utf8_slice_codeunits(part["request_key"], 0, 32).chunks:
            shorts = _shorts(chunk)
            found.update(map(fromhex, chunk.to_pylist()) if shorts is None else shorts)
    pa.default_memory_pool().release_unused()
    return found


def _shorts(prefixes: pa.Array) -> list[bytes] | None:
    """The short keys of 32-character hex prefixes, decoded in one call over their
    contiguous text (None when a cell is null, shorter, or not hex: decode one by one)."""
    count = len(prefixes)
    if count == 0 or prefixes.null_count:
        return None
    text = text_of(prefixes)
    if text.size != 32 * count:
        return None
    try:
        raw = bytes.fromhex(text.to_pybytes().decode("ascii"))
    except ValueError:  # not hex (or not ASCII): one by one, raising as before
        return None
    if len(raw) != 16 * count:  # fromhex skips spaces between digit pairs
        return None
    return [raw[i : i + 16] for i in range(0, 16 * count, 16)]


def dedup_rows(
    store: ObjectStore,
    requests: Sequence[pa.Table],
    *,
    run_id: str,
    currency: str,
    slice_rows: int = 65_536,
) -> Iterator[pa.Table]:
    """Catalog rows (:data:`SCHEMA`) recording ``requests`` (:data:`REQUEST_SCHEMA` tables)
    as deduplicated: one per stored image of each request's key (the later record of an
    image winning, as in ``catalog.existing_outputs``), in manifest then image order; no
    call, no cost. Yields tables of at most about ``slice_rows`` rows, so that a caller
    writing them holds one slice of output at a time."""
    if not requests:
        return
    asked = pa.concat_tables([t.cast(REQUEST_SCHEMA) for t in requests])
    del requests  # the caller drops its list too: the tables live on in ``asked`` alone
    order = asked["order"]
    if len(order) > 1 and not pc.all(pc.less(order[:-1], order[1:])).as_py():
        asked = asked.take(pc.sort_indices(order))
    found = _outputs(store, pc.unique(asked["request_key"]))
    if found.num_rows == 0:
        return
    found_keys = found["request_key"].combine_chunks()
    if len(pc.unique(found_keys)) == found.num_rows:
        # One image a key (the usual case): look each request up, no join, no sort.
        got = pc.index_in(asked["request_key"], value_set=found_keys).combine_chunks()
        found_at = pc.indices_nonzero(pc.is_valid(got))
        got = pc.drop_null(got)
        # Every request found (the usual case): slices of ``asked`` need no take.
        ask: pa.Array | None = None if len(found_at) == asked.num_rows else found_at
    else:
        found = _last_records(found)
        pairs = (
            asked.select(["request_key", "order"])
            .append_column("ask", pa.array(range(asked.num_rows), pa.int64()))
            .join(
                found.select(["request_key", "image_index"]).append_column(
                    "got", pa.array(range(found.num_rows), pa.int64())
                ),
                keys="request_key",
                join_type="inner",
                use_threads=False,
            )
            .sort_by([("order", "ascending"), ("image_index", "ascending")])
        )
        ask, got = pairs["ask"].combine_chunks(), pairs["got"].combine_chunks()
    found = found.combine_chunks()  # one chunk per column: a take per slice stays cheap
    now = int(time.time() * 1000)
    for start in range(0, len(got), slice_rows):
        yield _dedup_slice(
            asked.slice(start, slice_rows) if ask is None else asked,
            found,
            None if ask is None else ask.slice(start, slice_rows),
            got.slice(start, slice_rows),
            run_id=run_id,
            currency=currency,
            now_ms=now,
        )


def _outputs(store: ObjectStore, wanted: pa.Array) -> pa.Table:
    """The succeeded catalog rows of the keys ``wanted``: request_key and OUTPUT_COLUMNS.

    Two passes over the parts: the key and status columns of all parts first, matched
    against ``wanted`` in one ``is_in`` (which hashes its value set on every call: once,
    not once a part), then each part's output columns, filtered by its slice of the match.
    """
    schema = pa.schema([SCHEMA.field(c) for c in ("request_key", *OUTPUT_COLUMNS)])
    keys = part_keys(store)
    if not keys:
        return schema.empty_table()
    first = [_read(store, key, ("request_key", "status")) for key in keys]
    every = pa.concat_tables(first, promote_options="default")
    sizes = [part.num_rows for part in first]
    del first
    keep = pc.and_(
        pc.equal(every["status"], "succeeded"), pc.is_in(every["request_key"], value_set=wanted)
    )
    del every
    outputs, start = [], 0
    for key, size in zip(keys, sizes, strict=True):
        part = _read(store, key, ("request_key", "status", *OUTPUT_COLUMNS))
        if part.num_rows == size:
            mask = keep.slice(start, size)
        else:  # rewritten between the passes (a resumed shard): decide it again
            mask = pc.and_(
                pc.equal(part["status"], "succeeded"),
                pc.is_in(part["request_key"], value_set=wanted),
            )
        outputs.append(part.filter(mask).drop_columns(["status"]))
        start += size
    found = pa.concat_tables(outputs, promote_options="default").cast(schema)
    return found.set_column(
        found.schema.get_field_index("image_index"),
        "image_index",
        pc.fill_null(found["image_index"], 0),
    )


def _read(store: ObjectStore, key: str, columns: Sequence[str]) -> pa.Table:
    return pq.read_table(io.BytesIO(store.get(key)), columns=list(columns))


def _last_records(found: pa.Table) -> pa.Table:
    """One row per (key, image): the last record of it, as existing_outputs keeps."""
    found = found.append_column("place", pa.array(range(found.num_rows), pa.int64()))
    last = found.group_by(["request_key", "image_index"], use_threads=False).aggregate(
        [("place", "max")]
    )
    return found.take(last["place_max"]).drop_columns(["place"])


def _dedup_slice(
    asked: pa.Table,
    found: pa.Table,
    ask: pa.Array | None,
    got: pa.Array,
    *,
    run_id: str,
    currency: str,
    now_ms: int,
) -> pa.Table:
    """Catalog rows for the requests ``asked`` at ``ask`` (None: every row of ``asked``)
    and the outputs ``found`` at ``got``."""
    rows = len(got)
    now = pa.array([now_ms] * rows, SCHEMA.field("started_at").type)
    columns: dict[str, pa.ChunkedArray | pa.Array] = {
        name: asked[name] if ask is None else asked[name].take(ask)
        for name in REQUEST_SCHEMA.names
        if name != "order"
    }
    columns.update({name: found[name].take(got) for name in OUTPUT_COLUMNS})
    columns.update(
        run_id=pa.array([run_id] * rows, pa.string()),
        status=pa.array(["deduplicated"] * rows, pa.string()),
        attempts=pa.array([0] * rows, pa.int32()),
        ambiguous_calls=pa.array([0] * rows, pa.int32()),
        unit_price=pa.array([0.0] * rows, pa.float64()),
        currency=pa.array([currency] * rows, pa.string()),
        cost=pa.array([0.0] * rows, pa.float64()),
        possible_cost=pa.array([0.0] * rows, pa.float64()),
        started_at=now,
        finished_at=now,
    )
    arrays = [
        pc.cast(columns[f.name], f.type) if f.name in columns else pa.nulls(rows, f.type)
        for f in SCHEMA
    ]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)
