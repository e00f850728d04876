"""A large manifest planned in two processes: the first part of its rows here, the rest in a
second Python process, then merged into the plan one process would have made.

Planning is mostly Python (a sha256 and a few lookups per row) and the GIL keeps it on one
core whatever the threads; a second process plans the other part of the rows on the other
core. A manifest of at least ``Settings.plan_split_rows`` rows (and more than one record
batch) into a local or S3 store, or a dry run, is cut at the record batch nearest its
middle (:func:`split_row`). Each process reads, checks and keys its part, writes the shards
of its new requests and builds the catalog part of its deduplicated rows. The catalog's key
set is built once, here: the second process asks which of a block's keys it holds (one round
trip a block), so the set is not held twice. The second process's shards are numbered from
past the most the first part could write (``ceil(first part's rows / shard size)``), so
numbers may skip.

The merge (:func:`plan_in_two`) then does what one process would have done across the cut:

- a request of the second part whose key the first part already planned becomes an alias
  of that request (after the first part's own aliases of it, as in manifest order), with
  the second part's aliases of it; the second part's shards are rewritten without it (a
  shard left empty is deleted), so shards may hold fewer than the shard size;
- repeated row ids: the second process knows, before it reads, the row each repeated id
  is first seen at (``ManifestReader.duplicates``), so a repeat is refused wherever its
  first occurrence is;
- counts and the estimate are summed, the second part's folded requests left out; rejects
  are written in manifest order; the first bad batch in manifest order refuses a strict
  plan, with the message one process would give (the cut is at a batch boundary).

The catalog rows of deduplicated requests go into two parts, ``part-<run>-plan.parquet``
(the first part's rows) and ``part-<run>-plan_2.parquet``, stored once the shards are final.
The second process itself, and how the two talk, are ``qwbatch.plan.second_process``. Any
failure, in either process, kills the second process and deletes the shards (and parts)
both wrote.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from qwbatch.catalog import key_set as catalog_keys
from qwbatch.catalog import table as catalog
from qwbatch.core.errors import QwBatchError
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.manifest import (
    InputResolver,
    batch_starts,
    manifest_rows,
    read_manifest,
    rejects_table,
)
from qwbatch.plan.aliases import alias_of, attach_aliases, with_aliases
from qwbatch.plan.dedup import dedup_part, put_dedup_part
from qwbatch.plan.model import Plan
from qwbatch.plan.second_process import SECOND_LABEL, SHORT, Helper, Job, Part
from qwbatch.plan.shards import decode_shard, write_shard
from qwbatch.plan.stream import KeySet, Planner, delete_keys, shard_writer
from qwbatch.plan.tally import REQUEST_COUNTS, price
from qwbatch.storage import layout
from qwbatch.storage.stores import LocalStore, ObjectStore, S3Store, make_durable


def split_row(
    manifest: str | Path, store: ObjectStore | None, settings: Settings, batch_size: int
) -> int | None:
    """The row the second process would start at (the batch start nearest the middle), or
    None when the plan stays in one process: fewer rows than ``settings.plan_split_rows``,
    one batch, or a store the second process cannot open (only local and S3 stores)."""
    if settings.plan_split_rows < 1:
        return None
    if store is not None and type(store) not in (LocalStore, S3Store):
        return None
    try:
        file_rows = manifest_rows(manifest, settings=settings)
    except QwBatchError:
        return None  # the reader says why
    total = sum(file_rows)
    if total < settings.plan_split_rows:
        return None
    starts = [row for row in batch_starts(file_rows, batch_size) if row > 0]
    if not starts:
        return None
    return min(starts, key=lambda row: abs(2 * row - total))


def plan_in_two(
    manifest: str | Path,
    start: int,
    plan: Plan,
    *,
    store: ObjectStore | None,
    dry_run: bool,
    settings: Settings,
    table: ModelTable,
    size: int,
    strict: bool,
    batch_size: int,
    resolve_input: InputResolver | None,
) -> Plan:
    """Plan rows before ``start`` here and the rest in a second process; merge (see the
    module docstring). ``plan`` is the empty plan to fill."""
    run_id = plan.run_id
    writes = None if dry_run else store
    first_shard = -(-start // size)
    job = Job(
        manifest=manifest,
        store=store,
        dry_run=dry_run,
        settings=settings,
        table=table,
        run_id=run_id,
        strict=strict,
        size=size,
        batch_size=batch_size,
        start=start,
        first_shard=first_shard,
        proxy_inputs=resolve_input is not None,
    )
    writer = shard_writer(writes, size, run_id)
    helper: Helper | None = None
    try:
        # Started first: its interpreter starts while this one reads the ids and the catalog.
        helper = Helper(job, resolve_input)
        reader = read_manifest(
            manifest,
            table=table,
            default_model=settings.default_model,
            strict=strict,
            resolve_input=resolve_input,
            settings=settings,
            batch_size=batch_size,
        )
        helper.send(reader.duplicates())
        present = KeySet(catalog_keys.present_keys(store))
        helper.serve_keys(present)
        planner = Planner(plan, present, writer)
        with writer:
            for block in reader.blocks(stop=start):
                planner.take(block)
        part = helper.result()
        del present, planner.present
        _merge(planner, part, writes, size=size, run_id=run_id, first_shard=first_shard)
        del planner.seen
        if writes is not None and planner.aliases:
            attach_aliases(writes, run_id, size, writer.shard_keys, planner.aliases)
        make_durable(writes)
    except BaseException:
        _abandon(helper, writes, writer.shard_keys, run_id, first_shard)
        raise
    second_keys = [k for i, k in enumerate(part.shard_keys) if i not in part.emptied]
    plan.shard_keys = [*writer.shard_keys, *second_keys] if writes is not None else []
    plan.shards = writer.shards + part.shards - len(part.emptied)
    plan.rejected = len(planner.rejects)
    if writes is None:
        price(plan, planner.tally, settings, table)
        helper.finish(commit=False)
        return plan
    try:
        helper.commit()
        plan.rejects_uri = catalog.write_rejects(
            writes, rejects_table(planner.rejects), run_id=run_id
        )
        data = dedup_part(writes, planner.dedup, run_id=run_id, settings=settings)
        planner.dedup = catalog_keys.DedupRows()
        first = put_dedup_part(writes, data, run_id=run_id)
        # After the part: its cost lines (one per tag label) are not held while it is built.
        price(plan, planner.tally, settings, table)
        second = helper.finish(commit=True)
    except BaseException:
        _abandon(helper, writes, plan.shard_keys, run_id, first_shard)
        for label in ("plan", SECOND_LABEL):
            writes.delete(layout.part_key(run_id, label))
        raise
    plan.dedup_part_uris = [uri for uri in (first, second) if uri]
    plan.dedup_part_uri = plan.dedup_part_uris[0] if plan.dedup_part_uris else None
    return plan


def _merge(
    planner: Planner,
    part: Part,
    writes: ObjectStore | None,
    *,
    size: int,
    run_id: str,
    first_shard: int,
) -> None:
    """Fold the second part into the first part's plan: its requests the first part already
    planned become aliases there, its own aliases are attached, its shards rewritten."""
    plan, seen = planner.plan, planner.seen
    count = len(part.shorts) // SHORT
    shorts = (part.shorts[i : i + SHORT] for i in range(0, count * SHORT, SHORT))
    places = list(map(seen.get, shorts))
    #: second part's place → the first part's place of the same request
    folded = {j: place for j, place in enumerate(places) if place is not None}
    plan.rows_read += part.rows_read
    plan.deduplicated += part.deduplicated
    plan.folded += part.folded + len(folded)
    planner.rejects.extend(part.rejects)
    requests, part.requests, part.shorts = part.requests, REQUEST_COUNTS.empty_table(), b""
    if folded:
        requests = requests.filter(pa.array([place is None for place in places], pa.bool_()))
    planner.tally.add(requests)
    del requests, places
    touched = {j // size for j in (*folded, *part.aliases)}
    for index in sorted(touched):
        held = min(size, count - index * size)
        if sum(j in folded for j in range(index * size, index * size + held)) == held:
            part.emptied.add(index)
        if writes is None:
            continue
        key = part.shard_keys[index]
        kept = []
        for offset, item in enumerate(decode_shard(writes.get(key))):
            j = index * size + offset
            found = part.aliases.get(j, [])
            if j not in folded:
                with_aliases(item, found)
                kept.append(item)
                continue
            request = item.request
            planner.aliases[folded[j]].extend([(alias_of(request), request.priority), *found])
        if kept:
            write_shard(writes, run_id, first_shard + index, kept)
        else:
            writes.delete(key)


def _abandon(
    helper: Helper | None,
    writes: ObjectStore | None,
    first_keys: list[str],
    run_id: str,
    first_shard: int,
) -> None:
    """After a failure: stop the second process, delete the shards both wrote."""
    if helper is not None:
        helper.kill()
    if writes is None:
        return
    delete_keys(writes, first_keys)
    prefix = layout.shards_prefix(run_id)
    for key in list(writes.list(prefix)):
        index = layout.shard_index(key.removeprefix(prefix))
        if index is not None and index >= first_shard:
            writes.delete(key)
