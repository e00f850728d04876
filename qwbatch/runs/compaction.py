"""Compacting the catalog: many small parts (one per shard attempt) merged into a few.

A compaction never shows a qwbatch reader a row twice or a row missing. It goes:

1. write a marker ``catalog/_compaction/<id>.json``: the new parts' keys and the keys of the
   parts they replace;
2. write the new parts;
3. delete the replaced parts;
4. delete the marker.

:func:`qwbatch.catalog.table.part_keys` reads the markers: while a marker's new parts are not all
there, they are skipped; once they are, the parts they replace are. A crash anywhere leaves a
state readers agree on, and the next ``compact`` finishes (or undoes) what was left. Tools
that glob ``catalog/*.parquet`` themselves (DuckDB, polars) can see replaced rows twice in
the moment between steps 2 and 3 (or until a crashed compaction is finished).

Parts of runs that are not finished are left alone: a resume rewrites its shard parts by
name (see :func:`qwbatch.render.engine.run_shard`), which must not meet a merged copy.
"""

from __future__ import annotations

import io
import json
import secrets
import time
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from qwbatch.catalog.table import part_keys
from qwbatch.core.errors import StorageError
from qwbatch.runs import records as runs
from qwbatch.storage import layout
from qwbatch.storage.stores import ObjectStore

#: Rows per merged part (about 100-300 MB of Parquet for typical prompts).
DEFAULT_MAX_ROWS = 1_000_000


@dataclass(slots=True)
class CompactionResult:
    """What a compaction did: parts merged into ``new_parts``, rows carried over, parts of
    unfinished runs left alone, and interrupted compactions finished or undone first."""

    merged_parts: int = 0
    rows: int = 0
    new_parts: list[str] = field(default_factory=list)
    skipped_parts: int = 0
    recovered: int = 0


def compact(store: ObjectStore, *, max_rows: int = DEFAULT_MAX_ROWS) -> CompactionResult:
    """Merge the catalog's parts of finished runs into parts of at most ``max_rows`` rows."""
    result = CompactionResult(recovered=finish_interrupted(store))
    keys = part_keys(store)
    open_runs = _unfinished_runs(store)
    eligible = [
        k for k in keys if not any(k.startswith(layout.run_parts_prefix(r)) for r in open_runs)
    ]
    result.skipped_parts = len(keys) - len(eligible)
    if len(eligible) < 2:
        return result
    marker, new_keys, rows = write_merged(store, eligible, max_rows=max_rows)
    for key in eligible:
        store.delete(key)
    store.delete(marker)
    result.merged_parts = len(eligible)
    result.rows = rows
    result.new_parts = [store.uri(key) for key in new_keys]
    return result


def write_merged(
    store: ObjectStore, keys: list[str], *, max_rows: int = DEFAULT_MAX_ROWS
) -> tuple[str, list[str], int]:
    """Steps 1 and 2: the marker, then the merged parts; ``(marker, new part keys, rows)``.

    Until the replaced parts are deleted, readers through :func:`qwbatch.catalog.table.part_keys`
    see the merged parts instead of them.
    """
    merged = pa.concat_tables([_read_part(store, key) for key in keys], promote_options="default")
    name = layout.compaction_name(
        time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), secrets.token_hex(3)
    )
    chunks = [merged.slice(i, max_rows) for i in range(0, merged.num_rows, max_rows)] or [merged]
    new_keys = [layout.compacted_part_key(name, i) for i in range(len(chunks))]
    marker = layout.compaction_marker_key(name)
    body = json.dumps({"parts": new_keys, "replaces": keys}).encode()
    store.put(marker, body, content_type="application/json")
    for key, chunk in zip(new_keys, chunks, strict=True):
        sink = io.BytesIO()
        pq.write_table(chunk, sink, compression="zstd")
        store.put(key, sink.getvalue(), content_type="application/x-parquet")
    return marker, new_keys, merged.num_rows


def finish_interrupted(store: ObjectStore) -> int:
    """Complete compactions whose new parts all exist; undo those whose parts do not."""
    markers = [k for k in store.list(layout.COMPACTION_PREFIX) if k.endswith(".json")]
    for marker in markers:
        body = json.loads(store.get(marker))
        new, replaced = body["parts"], body["replaces"]
        done = all(store.exists(key) for key in new)
        for key in replaced if done else new:
            store.delete(key)
        store.delete(marker)
    return len(markers)


def _read_part(store: ObjectStore, key: str) -> pa.Table:
    try:
        return pq.read_table(io.BytesIO(store.get(key)))
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(
            f"catalog part {store.uri(key)} is unreadable ({exc}); "
            "`qwbatch catalog rebuild` sets unreadable parts aside"
        ) from exc


def _unfinished_runs(store: ObjectStore) -> set[str]:
    found = set()
    for key in store.list(layout.INDEX_PREFIX):
        run_id = key.rsplit("/", 1)[-1]
        if not runs.is_finished(store, run_id):
            found.add(run_id)
    return found
