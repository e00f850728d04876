"""The catalog as the plan sees it: which request keys already have outputs, compactly.

:func:`present_keys` reads the ``request_key`` and ``status`` columns alone and keeps, per
succeeded key, 16 bytes (the first 128 bits of the sha256; about 80 bytes a key with the set's
overhead, against ~1 KB for a row of ``catalog.existing_outputs``). Once the manifest has
been read, :func:`dedup_rows` reads the output columns again, only for the keys asked for,
and joins them to the deduplicated manifest rows in Arrow: the catalog rows
``plan.dedup_records`` would have made, with no Python object per row.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qwbatch.catalog.table import SCHEMA, iter_parts, part_keys
from qwbatch.core.arrow_text import text_of
from qwbatch.storage import layout
from qwbatch.storage.stores import ObjectStore

#: Catalog columns an existing output gives a deduplicated row.
OUTPUT_COLUMNS = ("image_index", "output_uri", "sha256", "bytes", "width", "height")
#: Columns of deduplicated rows nearly always distinct row to row (ids, keys, prompts,
#: seeds, outputs): not dictionary-encoded in the plan's catalog part (the rest are).
DISTINCT_COLUMNS = (
    "row_id",
    "request_key",
    "prompt",
    "seed",
    "output_uri",
    "sha256",
    "output_key",
)
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
    for part in iter_parts(store, ("request_key", "status")):
        succeeded = pc.equal(part["status"], "succeeded")
        if not pc.all(succeeded).as_py():
            part = part.filter(succeeded)
        found.update(_short_keys(part["request_key"]))
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


class DedupRows:
    """Deduplicated manifest rows (:data:`REQUEST_SCHEMA`) kept until the manifest is read:
    each block's rows in manifest order as zstd-compressed Arrow IPC (prompts and ids shrink
    about four times over), their request keys apart as 32-byte digests, to look the outputs
    up."""

    def __init__(self) -> None:
        self._blocks: list[pa.Buffer] = []
        self._keys: list[pa.Array] = []
        self.rows = 0

    def add(self, rows: pa.Table) -> None:
        """Keep one block's rows (in any order; their ``order`` sorts them)."""
        if rows.num_rows == 0:
            return
        rows = rows.cast(REQUEST_SCHEMA)
        order = rows["order"]
        if len(order) > 1 and not pc.all(pc.less(order[:-1], order[1:])).as_py():
            rows = rows.take(pc.sort_indices(order))
        self._keys.append(digests(rows["request_key"]))
        sink = pa.BufferOutputStream()
        options = pa.ipc.IpcWriteOptions(compression="zstd")
        with pa.ipc.new_stream(sink, REQUEST_SCHEMA, options=options) as writer:
            writer.write_table(rows)
        self._blocks.append(sink.getvalue())
        self.rows += rows.num_rows

    def keys(self) -> pa.ChunkedArray:
        """Every row's request key as its digest (:func:`digests`), one chunk per block, in
        manifest order."""
        return pa.chunked_array(self._keys, _DIGEST)

    def blocks(self) -> Iterator[pa.Table]:
        """Each block's rows, decompressed one block at a time, in manifest order."""
        for data in self._blocks:
            yield pa.ipc.open_stream(data).read_all()


_DIGEST = pa.binary(32)


def digests(keys: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Request keys (64 hex digits) as the 32 bytes they spell, decoded in one call. A key
    that is not 64 hex digits (a hand-edited catalog row) stands for a digest no request
    key spells (the sha256 of its text): it matches nothing."""
    keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
    text = text_of(keys) if len(keys) and not keys.null_count else None
    try:
        raw = bytes.fromhex(text.to_pybytes().decode("ascii")) if text is not None else None
    except ValueError:
        raw = None
    if raw is None or len(raw) != 32 * len(keys):  # some odd key: one by one
        raw = b"".join(map(_digest, keys.to_pylist()))
    return pa.FixedSizeBinaryArray.from_buffers(_DIGEST, len(keys), [None, pa.py_buffer(raw)])


def _digest(key: str | None) -> bytes:
    if key is not None and len(key) == 64:
        try:
            return bytes.fromhex(key)
        except ValueError:
            pass
    return hashlib.sha256(f"not a request key: {key!r}".encode()).digest()


def dedup_rows(
    store: ObjectStore,
    requests: DedupRows,
    *,
    run_id: str,
    currency: str,
    slice_rows: int = 65_536,
) -> Iterator[pa.Table]:
    """Catalog rows (:data:`SCHEMA`) recording ``requests`` as deduplicated: one per stored
    image of each request's key (the later record of an image winning, as in
    ``catalog.existing_outputs``), in manifest then image order; no call, no cost. Yields
    tables of at most about ``slice_rows`` rows, one block of requests decompressed at a
    time, so that a caller writing them holds one slice of output at a time."""
    if not requests.rows:
        return
    keys = requests.keys()
    found = _outputs(store, pc.unique(keys))
    if found.num_rows == 0:
        return
    one_each = len(pc.unique(found["key"])) == found.num_rows
    if one_each:
        # One image a key (the usual case): look each request up, no join, no sort.
        lookups = pc.index_in(keys, value_set=found["key"]).combine_chunks()
    else:
        found = _last_records(found)
        outputs = found.select(["key", "image_index"]).append_column(
            "got", pa.array(range(found.num_rows), pa.int64())
        )
    # The outputs alone (each request brings its key), one chunk per column: a take per
    # slice stays cheap.
    found = found.drop_columns(["key"]).combine_chunks()
    now = int(time.time() * 1000)
    first = 0  # the block's first row among all requests
    pending: list[pa.Table] = []  # rows made but not yet handed out (fewer than a slice)
    held = 0
    for block in requests.blocks():
        ask: pa.Array | None
        if one_each:
            got = lookups.slice(first, block.num_rows)
            first += block.num_rows
            found_at = pc.indices_nonzero(pc.is_valid(got))
            got = pc.drop_null(got)
            # Every request found (the usual case): slices of the block need no take.
            ask = None if len(found_at) == block.num_rows else found_at
        else:
            asked = pa.table(
                {
                    "key": digests(block["request_key"]),
                    "order": block["order"],
                    "ask": pa.array(range(block.num_rows), pa.int64()),
                }
            )
            pairs = asked.join(outputs, keys="key", join_type="inner", use_threads=False).sort_by(
                [("order", "ascending"), ("image_index", "ascending")]
            )
            ask, got = pairs["ask"].combine_chunks(), pairs["got"].combine_chunks()
        for start in range(0, len(got), slice_rows):
            rows = _dedup_slice(
                block.slice(start, slice_rows) if ask is None else block,
                found,
                None if ask is None else ask.slice(start, slice_rows),
                got.slice(start, slice_rows),
                run_id=run_id,
                currency=currency,
                now_ms=now,
            )
            pending.append(rows)
            held += rows.num_rows
            # Blocks are often smaller than a slice: slices gather them (a writer makes a
            # row group of each slice, and small row groups cost time and space).
            if held >= slice_rows:
                yield pa.concat_tables(pending)
                pending, held = [], 0
    if pending:
        yield pa.concat_tables(pending)


def _outputs(store: ObjectStore, wanted: pa.Array) -> pa.Table:
    """The succeeded catalog rows of the keys ``wanted`` (:func:`digests`): their ``key``
    (digest) and OUTPUT_COLUMNS.

    Two passes over the parts: the key and status columns of every part first, the keys as
    32-byte digests (32 MB a million rows) matched against ``wanted`` in one ``is_in``
    (which hashes its value set on every call: once, not once a part or a batch); then the
    output columns of the parts that have a match, a record batch at a time, filtered by
    their slice of the match. Memory holds the digests, one batch and what was found.
    """
    parts = part_keys(store)
    keys: list[pa.Array | None] = []
    ok: list[pa.Array] = []
    for part in parts:
        first = pq.read_table(io.BytesIO(store.get(part)), columns=["request_key", "status"])
        keys.append(digests(first["request_key"]))
        ok.append(pc.fill_null(pc.equal(first["status"], "succeeded"), False).combine_chunks())
    every = pa.chunked_array(keys, _DIGEST)
    matched = pc.and_(pa.chunked_array(ok, pa.bool_()), pc.is_in(every, value_set=wanted))
    del every
    columns: dict[str, list[pa.Array]] = {name: [] for name in ("key", *OUTPUT_COLUMNS)}
    start = 0
    for index, part in enumerate(parts):
        part_digests, rows = keys[index], len(ok[index])
        keys[index] = None  # one part's digests at a time from here
        mask = matched.slice(start, rows).combine_chunks()
        start += rows
        if not pc.any(mask).as_py():
            continue
        source = pq.ParquetFile(io.BytesIO(store.get(part)))
        if source.metadata.num_rows != rows:  # rewritten between the passes: decide it again
            again = source.read(columns=["request_key", "status", *OUTPUT_COLUMNS])
            part_digests = digests(again["request_key"])
            mask = pc.and_(
                pc.fill_null(pc.equal(again["status"], "succeeded"), False),
                pc.is_in(part_digests, value_set=wanted),
            ).combine_chunks()
            batches = again.to_batches(max_chunksize=_BATCH_ROWS)
        else:
            batches = source.iter_batches(batch_size=_BATCH_ROWS, columns=list(OUTPUT_COLUMNS))
        assert part_digests is not None
        columns["key"].append(pc.filter(part_digests, mask))
        at = 0
        for batch in batches:
            picked = batch.filter(mask.slice(at, batch.num_rows))
            at += batch.num_rows
            for name in OUTPUT_COLUMNS:
                columns[name].append(picked.column(name).cast(SCHEMA.field(name).type))
    arrays = []
    for name in ("key", *OUTPUT_COLUMNS):
        kind = _DIGEST if name == "key" else SCHEMA.field(name).type
        found = pa.concat_arrays([pa.array([], kind), *columns.pop(name)])
        arrays.append(pc.fill_null(found, 0) if name == "image_index" else found)
    return pa.Table.from_arrays(arrays, names=["key", *OUTPUT_COLUMNS])


#: Rows of a catalog part read at a time when looking outputs up.
_BATCH_ROWS = 32_768


def _short_keys(keys: pa.Array | pa.ChunkedArray) -> list[bytes]:
    """:func:`short_key` of each request key (hex text), decoded in one call per chunk."""
    shorts: list[bytes] = []
    chunks = keys.chunks if isinstance(keys, pa.ChunkedArray) else [keys]
    for chunk in chunks:
        prefixes = pc.utf8_slice_codeunits(chunk, 0, 32)
        decoded = _shorts(prefixes)
        shorts.extend(map(bytes.fromhex, prefixes.to_pylist()) if decoded is None else decoded)
    return shorts


def _last_records(found: pa.Table) -> pa.Table:
    """One row per (key, image): the last record of it, as existing_outputs keeps."""
    found = found.append_column("place", pa.array(range(found.num_rows), pa.int64()))
    last = found.group_by(["key", "image_index"], use_threads=False).aggregate([("place", "max")])
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
        # as CatalogRecord's defaults: no text checked here, no re-rolls
        text_expected=pa.array([[]] * rows, pa.list_(pa.string())),
        rerolls=pa.array([0] * rows, pa.int32()),
        started_at=now,
        finished_at=now,
    )
    columns["output_key"] = layout.output_keys(
        pc.cast(columns["request_key"], pa.string()), pc.cast(columns["image_index"], pa.int32())
    )
    arrays = [
        pc.cast(columns[f.name], f.type) if f.name in columns else pa.nulls(rows, f.type)
        for f in SCHEMA
    ]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)
