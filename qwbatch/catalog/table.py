"""The catalog: a Parquet dataset under ``DEST/catalog/``, one part per shard of a run.

A resumed shard rewrites its part whole under the same name (the journal restores the rows
the earlier attempt had); ``run.compaction`` merges parts, ``catalog.rebuild`` restores
rows from the images' metadata.

Each part is written whole in one operation (temp file + rename on a local folder, a single
PUT on S3), so a reader never sees half a part. Parts are plain Parquet files sharing
:data:`SCHEMA`; read them with pyarrow (``pq.read_table("out/catalog")``), DuckDB
(``select * from 'out/catalog/*.parquet'``) or polars
(``pl.read_parquet("out/catalog/*.parquet")``).

One row per output image, and one per request that ended without an image.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qwbatch.core.types import CatalogRecord
from qwbatch.storage import layout
from qwbatch.storage.stores import ObjectStore

_STR = pa.string()
SCHEMA = pa.schema(
    [
        pa.field("run_id", _STR, nullable=False),
        pa.field("row_id", _STR, nullable=False),
        pa.field("request_key", _STR, nullable=False),
        pa.field("mode", _STR, nullable=False),
        pa.field("model", _STR, nullable=False),
        pa.field("prompt", _STR, nullable=False),
        pa.field("negative_prompt", _STR),
        pa.field("size", _STR),
        pa.field("n", pa.int32()),
        pa.field("seed", pa.int64()),
        pa.field("image_index", pa.int32()),
        pa.field("status", _STR, nullable=False),
        pa.field("error_code", _STR),
        pa.field("error_message", _STR),
        pa.field("attempts", pa.int32()),
        pa.field("ambiguous_calls", pa.int32()),
        pa.field("provider_request_id", _STR),
        pa.field("provider_task_id", _STR),
        pa.field("output_uri", _STR),
        pa.field("sha256", _STR),
        pa.field("bytes", pa.int64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("unit_price", pa.float64()),
        pa.field("currency", _STR),
        pa.field("cost", pa.float64()),
        pa.field("possible_cost", pa.float64()),
        pa.field("started_at", pa.timestamp("ms", tz="UTC")),
        pa.field("finished_at", pa.timestamp("ms", tz="UTC")),
        pa.field("tags", pa.map_(_STR, _STR)),
        pa.field("input_images", pa.list_(_STR)),
        pa.field("input_sha256", pa.list_(_STR)),
        pa.field("input_notes", pa.list_(_STR)),
        pa.field("text_expected", pa.list_(_STR)),
        pa.field("text_found", _STR),
        pa.field("text_cer", pa.float64()),
        pa.field("text_ok", pa.bool_()),
        pa.field("rerolls", pa.int32()),
        # DEST-relative: output_uri is absolute (file://, s3://) and breaks when DEST moves.
        # Parts written before this column read it as null: see catalog.view.output_location.
        pa.field("output_key", _STR),
        # Channel sizes: the size asked for and the delivered image's key (the rendered one
        # stays at output_key). Null without a target, and in parts written before them.
        pa.field("target_size", _STR),
        pa.field("delivered_key", _STR),
    ]
)

_RECORD_FIELDS = [f.name for f in fields(CatalogRecord)]
assert set(_RECORD_FIELDS) == set(SCHEMA.names), "CatalogRecord and SCHEMA must agree"


def records_to_table(records: Sequence[CatalogRecord]) -> pa.Table:
    """Records → an Arrow table in :data:`SCHEMA` (timestamps from POSIX seconds)."""
    columns: dict[str, list[object]] = {name: [] for name in SCHEMA.names}
    for record in records:
        for name in SCHEMA.names:
            value = getattr(record, name)
            if name in ("started_at", "finished_at") and value is not None:
                value = int(value * 1000)
            elif name == "tags":
                value = list(value.items())
            elif name == "output_key" and value is None and _has_output(record):
                value = layout.output_key(record.request_key, record.image_index or 0)
            elif name == "delivered_key" and value is None and _delivered(record):
                value = layout.delivered_key(record.request_key, record.image_index or 0)
            columns[name].append(value)
    arrays = [pa.array(columns[f.name], type=f.type) for f in SCHEMA]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _has_output(record: CatalogRecord) -> bool:
    return bool(record.output_uri) and record.image_index is not None


def _delivered(record: CatalogRecord) -> bool:
    return bool(record.target_size) and _has_output(record)


def _table_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def write_part(
    store: ObjectStore,
    records: Sequence[CatalogRecord],
    *,
    run_id: str,
    label: str,
    unique: bool = True,
) -> str | None:
    """Write ``records`` as one new catalog part; its URI, or None when there is nothing.

    ``label`` names the part's origin (``shard-00003``, ``plan``); a random suffix keeps two
    attempts of the same shard from overwriting each other. With ``unique=False`` the name
    is fixed by run and label, so a later attempt that holds every row of the earlier one
    (a resume: the journal restores them) replaces it, whole, in one write.
    """
    if not records:
        return None
    return write_table(store, records_to_table(records), run_id=run_id, label=label, unique=unique)


def write_table(
    store: ObjectStore, table: pa.Table, *, run_id: str, label: str, unique: bool = True
) -> str | None:
    """``write_part`` for rows already in an Arrow table of :data:`SCHEMA`."""
    return write_tables(store, [table], run_id=run_id, label=label, unique=unique)


def write_tables(
    store: ObjectStore,
    tables: Iterable[pa.Table],
    *,
    run_id: str,
    label: str,
    unique: bool = True,
    use_dictionary: bool | Sequence[str] = True,
) -> str | None:
    """``write_table`` for rows arriving as several tables of :data:`SCHEMA`, encoded one
    at a time into one part (memory: one table plus the part's compressed bytes).
    ``use_dictionary`` names the columns to dictionary-encode (all by default): a column
    whose values are nearly all distinct only pays for a dictionary it then drops."""
    data = encode_tables(tables, use_dictionary=use_dictionary)
    if data is None:
        return None
    return put_part(store, data, run_id=run_id, label=label, unique=unique)


def encode_tables(
    tables: Iterable[pa.Table], *, use_dictionary: bool | Sequence[str] = True
) -> bytes | None:
    """Rows of :data:`SCHEMA` as the bytes of one part (see :func:`write_tables`); None
    when there are none."""
    sink = io.BytesIO()
    rows = 0
    with pq.ParquetWriter(
        sink, SCHEMA, compression="zstd", use_dictionary=use_dictionary
    ) as writer:
        for table in tables:
            rows += table.num_rows
            if table.num_rows:
                writer.write_table(table)
    return sink.getvalue() if rows else None


def put_part(
    store: ObjectStore, data: bytes, *, run_id: str, label: str, unique: bool = True
) -> str:
    """Store a part's bytes (:func:`encode_tables`) under its name (see :func:`write_part`)."""
    suffix = f"-{uuid.uuid4().hex[:8]}" if unique else ""
    key = layout.part_key(run_id, label, suffix)
    store.put(key, data, content_type="application/x-parquet")
    return store.uri(key)


def part_keys(store: ObjectStore) -> list[str]:
    """Keys of every live catalog part, in name order (run ids sort by time).

    A compaction (``qwbatch.runs.compaction``) in progress is invisible: until all its new parts
    exist they are skipped, and once they do, the parts they replace are.
    """
    keys = sorted(store.list(layout.CATALOG_PREFIX))
    parts = [
        k for k in keys if k.endswith(".parquet") and not k.startswith(layout.COMPACTION_PREFIX)
    ]
    markers = [k for k in keys if k.startswith(layout.COMPACTION_PREFIX) and k.endswith(".json")]
    if not markers:
        return parts
    live, hidden = set(parts), set()
    for marker in markers:
        body = json.loads(store.get(marker))
        new, replaced = set(body["parts"]), set(body["replaces"])
        hidden |= replaced if new <= live else new
    return [k for k in parts if k not in hidden]


def iter_parts(store: ObjectStore, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
    """Each catalog part as a table, reading only ``columns`` when given."""
    for key in part_keys(store):
        table = pq.read_table(
            io.BytesIO(store.get(key)), columns=list(columns) if columns else None
        )
        yield table


def read_catalog(store: ObjectStore, columns: Sequence[str] | None = None) -> pa.Table:
    """The whole catalog as one table (empty, with :data:`SCHEMA`, when there is none)."""
    tables = list(iter_parts(store, columns))
    if not tables:
        schema = pa.schema([SCHEMA.field(c) for c in columns]) if columns else SCHEMA
        return schema.empty_table()
    return pa.concat_tables(tables, promote_options="default")


@dataclass(frozen=True, slots=True)
class ExistingImage:
    """An output the catalog says exists, enough to record a deduplicated row for it."""

    image_index: int
    output_uri: str
    sha256: str | None
    bytes: int | None
    width: int | None
    height: int | None


_EXISTING_COLUMNS = (
    "request_key",
    "status",
    "image_index",
    "output_uri",
    "sha256",
    "bytes",
    "width",
    "height",
)


def existing_outputs(store: ObjectStore) -> dict[str, list[ExistingImage]]:
    """request_key → its stored images, from every succeeded row of the catalog."""
    found: dict[str, dict[int, ExistingImage]] = {}
    for table in iter_parts(store, _EXISTING_COLUMNS):
        table = table.filter(pc.equal(table["status"], "succeeded"))
        for row in table.to_pylist():
            image = ExistingImage(
                image_index=row["image_index"] or 0,
                output_uri=row["output_uri"],
                sha256=row["sha256"],
                bytes=row["bytes"],
                width=row["width"],
                height=row["height"],
            )
            found.setdefault(row["request_key"], {})[image.image_index] = image
    return {
        key: sorted(images.values(), key=lambda i: i.image_index) for key, images in found.items()
    }


def write_rejects(store: ObjectStore, table: pa.Table, *, run_id: str) -> str | None:
    """Write a run's rejected manifest rows beside the catalog; its URI, or None if none."""
    if table.num_rows == 0:
        return None
    key = layout.rejects_key(run_id)
    store.put(key, _table_bytes(table), content_type="application/x-parquet")
    return store.uri(key)


def concat_records(groups: Iterable[Sequence[CatalogRecord]]) -> list[CatalogRecord]:
    return [record for group in groups for record in group]


def read_part(store: ObjectStore, key: str) -> pa.Table:
    """One catalog part in :data:`SCHEMA`: columns added since it was written read as nulls."""
    table = pq.read_table(io.BytesIO(store.get(key)))
    for name in SCHEMA.names:
        if name not in table.column_names:
            kind = SCHEMA.field(name).type
            table = table.append_column(pa.field(name, kind), pa.nulls(table.num_rows, kind))
    return table.select(SCHEMA.names).cast(SCHEMA)


def rewrite_part(store: ObjectStore, key: str, table: pa.Table) -> None:
    """Replace the part at ``key`` with ``table`` (of :data:`SCHEMA`), whole, in one write."""
    data = encode_tables([table])
    if data is not None:
        store.put(key, data, content_type="application/x-parquet")


def catalog_columns(
    store: ObjectStore, columns: Sequence[str], *, run_id: str | None = None
) -> pa.Table:
    """``columns`` of every catalog part (null where a part lacks one), rows of ``run_id``.

    Parts written by older versions may miss a column added since; they read as nulls.
    """
    schema = pa.schema([SCHEMA.field(name) for name in columns])
    tables = []
    for key in part_keys(store):
        parquet = pq.ParquetFile(io.BytesIO(store.get(key)))
        present = [name for name in columns if name in parquet.schema_arrow.names]
        table = parquet.read(columns=present)
        for name in columns:
            if name not in present:
                table = table.append_column(
                    schema.field(name), pa.nulls(table.num_rows, schema.field(name).type)
                )
        table = table.select(list(columns)).cast(schema)
        if run_id is not None:
            table = table.filter(pc.equal(table["run_id"], run_id))
        tables.append(table)
    return pa.concat_tables(tables) if tables else schema.empty_table()
