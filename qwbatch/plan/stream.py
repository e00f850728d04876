"""The streaming plan: a manifest planned batch by batch, in memory that does not grow with it.

``qwbatch.plan.planner.plan_run`` plans here every plan without a budget (a budget ranks the
whole plan before cutting it, so it plans in memory): :func:`plan_in_one` in this process,
or, from ``Settings.plan_split_rows`` rows when set, in two (``qwbatch.plan.split``), each running
the :class:`Planner` below on its part of the rows. Per record batch (``PLAN_BATCH_ROWS``
rows):

1. ``ManifestReader.blocks`` validates the common rows column-wise (``manifest_vector``)
   and the rest one by one;
2. each row's key is one sha256 over its canonical prefix (``manifest_vector.key_rows``);
3. a 16-byte short key is looked up in the catalog's keys (``catalog_keys.present_keys``,
   read once, key column only; a block's keys at once) and in the keys already planned (a
   dict short key → the request's place in the plan);
4. new requests' shard lines are joined in Arrow and handed to a ``ShardWriter``, which
   writes each shard (zstd) as it fills; deduplicated rows are kept compressed
   (``qwbatch.plan.dedup``); a row repeating an earlier row's key is kept as an ``Alias``
   of that request (rare, so kept as an object; ``qwbatch.plan.aliases``); the estimate's
   counts are gathered in Arrow (``qwbatch.plan.tally``).

When the manifest is read, the shards that gained aliases are rewritten with them, the
deduplicated rows are joined with the catalog's outputs (``catalog_keys.dedup_rows``) into
the ``plan`` catalog part, and the estimate is priced from the tally. Peak
memory is about one record batch, one shard of lines, and ~100 bytes per distinct key (the
catalog's and the plan's), plus the deduplicated rows (compressed) until they are written.
Arrow allocates from its jemalloc pool meanwhile (:func:`planning_pool`).

A plan that fails (a strict reject, an unreadable file) deletes the shards it wrote.
"""

from __future__ import annotations

import itertools
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

from qwbatch.catalog import key_set as catalog_keys
from qwbatch.catalog import table as catalog
from qwbatch.catalog.key_set import short_key
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.core.types import Alias, PlanItem, RenderRequest
from qwbatch.manifest import CheckedBlock, InputResolver, Reject, read_manifest, rejects_table
from qwbatch.manifest.vector import hex_keys, key_rows, shard_lines
from qwbatch.plan.aliases import alias_of, attach_aliases
from qwbatch.plan.dedup import dedup_part, fast_dedup_rows, put_dedup_part, slow_dedup_rows
from qwbatch.plan.model import Plan
from qwbatch.plan.shard_writer import WRITERS, ShardWriter
from qwbatch.plan.shards import encode_line
from qwbatch.plan.tally import REQUEST_COUNTS, Tally, fast_counts, price, request_counts
from qwbatch.storage.layout import shard_key
from qwbatch.storage.stores import LocalStore, ObjectStore, make_durable


class KeyLookup(Protocol):
    """Which of some short keys (``catalog_keys.short_key``) the catalog has."""

    def hits(self, shorts: list[bytes]) -> bytes:
        """One byte per key: 1 when the catalog has it, else 0."""
        ...


class KeySet:
    """The catalog's short keys in a set (``catalog_keys.present_keys``)."""

    def __init__(self, keys: set[bytes]) -> None:
        self.keys = keys

    def hits(self, shorts: list[bytes]) -> bytes:
        return bytes(map(self.keys.__contains__, shorts))


@dataclass(frozen=True, slots=True)
class _BlockKeys:
    """A block's rows as the plan places them: the fast rows (``fast``) and their short
    keys, the row checker's requests (``slow``) and theirs, and one byte per key (fast
    rows', then the row checker's), 1 where the catalog has it."""

    fast: pa.Table
    shorts: list[bytes]
    slow: list[RenderRequest]
    slow_shorts: list[bytes]
    hits: bytes


class Planner:
    """The state of one streaming plan (or of one part of the manifest) between batches.

    ``keep_requests`` keeps each new request's model, n and tags (``requests``, in the order
    of their places) rather than counting them: the second process of a split plan hands
    them over, so that requests the first part already planned can be left out.
    """

    def __init__(
        self,
        plan: Plan,
        present: KeyLookup,
        writer: ShardWriter,
        *,
        keep_requests: bool = False,
    ) -> None:
        self.plan = plan
        self.present = present
        self.writer = writer
        #: short key → place of its request in the plan (its shard is place // shard size)
        self.seen: dict[bytes, int] = {}
        self.rejects: list[Reject] = []
        self.dedup = catalog_keys.DedupRows()
        self.aliases: dict[int, list[tuple[Alias, int | None]]] = defaultdict(list)
        self.tally = Tally()
        self.requests: list[pa.Table] | None = [] if keep_requests else None
        #: A dry run writes no shard and no catalog part: it builds neither their lines nor
        #: the rows of deduplicated requests (about a tenth of its CPU), only counts them.
        self.counts_only = writer.counts_only

    def take(self, block: CheckedBlock) -> None:
        """Plan one block's rows, in manifest order."""
        self.plan.rows_read += block.num_rows
        self.rejects.extend(block.rejects)
        fast = block.fast
        digests, seeds = key_rows(block.rows)
        slow = block.requests
        shorts = [digest[:16] for digest in digests]
        slow_shorts = [short_key(r.request_key) for r in slow]
        # Which keys the catalog has, for the whole block at once (one round trip when the
        # catalog's keys are in the other process of a split plan).
        hits = self.present.hits([*shorts, *slow_shorts])
        new: list[int | RenderRequest] = []
        alias_fast: list[int] = []
        keys = _BlockKeys(fast, shorts, slow, slow_shorts, hits)
        if not self._place_in_bulk(keys, new):
            self._place_one_by_one(keys, new, alias_fast)
        # The catalog's hits, fast rows' and the row checker's, in manifest order each.
        count = len(shorts)
        dedup_fast = list(itertools.compress(range(count), hits))
        slow_dedup = list(itertools.compress(slow, hits[count:]))

        self.plan.deduplicated += len(dedup_fast) + len(slow_dedup)
        if self.counts_only:
            self._add_new(block, None, None, new)
        else:
            keys, seed_array = hex_keys(digests), pa.array(seeds, pa.int64())
            self._add_new(block, keys, seed_array, new)
            self._add_dedup(fast, keys, seed_array, dedup_fast, slow_dedup)
        if alias_fast:
            self._alias_fast(fast, shorts, alias_fast)

    def _place_in_bulk(self, block: _BlockKeys, new: list[int | RenderRequest]) -> bool:
        """Place the block's requests the catalog lacks at once, when none of them repeats
        another or one already planned (the common block): ``new`` gets them in manifest
        order (a fast row's index, a row-checker row's request), as one by one would. False
        (and nothing placed) when some repeats. ``hits`` is one byte per key (fast rows',
        then the row checker's), 0 or 1: compress() selects by it."""
        fast, shorts, slow, hits = block.fast, block.shorts, block.slow, block.hits
        keys = shorts + block.slow_shorts if slow else shorts
        order: list[int] | range = range(len(keys))
        if slow:  # the row checker's requests between the fast rows, by row number
            numbers = pa.concat_arrays(
                [
                    fast["row_number"].combine_chunks().cast(pa.int64()),
                    pa.array([r.row_number for r in slow], pa.int64()),
                ]
            )
            order = pc.sort_indices(numbers).to_pylist()  # stable: a row's requests in order
        if 1 in hits:
            missing = hits.translate(_NOT)
            if slow:  # the selectors in the order of ``order``
                missing = bytes(map(missing.__getitem__, order))
            order = list(itertools.compress(order, missing))
        fresh = keys if order == range(len(keys)) else list(map(keys.__getitem__, order))
        seen = self.seen
        if not _all_new(fresh, seen):
            return False
        count = len(shorts)
        if slow:
            new.extend(i if i < count else slow[i - count] for i in order)
        else:
            new.extend(order)
        seen.update(zip(fresh, itertools.count(len(seen))))
        return True

    def _place_one_by_one(
        self, block: _BlockKeys, new: list[int | RenderRequest], alias_fast: list[int]
    ) -> None:
        """Place the block's requests in manifest order: a request the catalog has is left
        to the caller, one repeating an earlier request becomes its alias."""
        shorts, slow, slow_shorts, hits = block.shorts, block.slow, block.slow_shorts, block.hits
        seen = self.seen
        fast_rows: list[int] = block.fast["row_number"].to_pylist() if slow else []
        next_slow = 0
        count = len(shorts)
        for i, short in enumerate(shorts):
            while next_slow < len(slow) and slow[next_slow].row_number < fast_rows[i]:
                at = next_slow
                self._take_slow(slow[at], slow_shorts[at], hits[count + at], new)
                next_slow += 1
            if hits[i]:
                continue
            if short in seen:
                alias_fast.append(i)
            else:
                seen[short] = len(seen)
                new.append(i)
        for at in range(next_slow, len(slow)):
            self._take_slow(slow[at], slow_shorts[at], hits[count + at], new)

    def _add_dedup(
        self,
        fast: pa.Table,
        keys: pa.Array,
        seeds: pa.Array,
        dedup_fast: list[int],
        slow_dedup: list[RenderRequest],
    ) -> None:
        deduplicated = [fast_dedup_rows(fast, keys, seeds, dedup_fast)] if dedup_fast else []
        if slow_dedup:
            deduplicated.append(slow_dedup_rows(slow_dedup))
        if deduplicated:
            schema = catalog_keys.REQUEST_SCHEMA
            self.dedup.add(pa.concat_tables([rows.cast(schema) for rows in deduplicated]))

    def _take_slow(
        self, request: RenderRequest, short: bytes, present: int, new: list[int | RenderRequest]
    ) -> None:
        if present:
            return  # the caller gathers the catalog's hits
        place = self.seen.get(short)
        if place is None:
            self.seen[short] = len(self.seen)
            new.append(request)
            return
        self.aliases[place].append((alias_of(request), request.priority))
        self.plan.folded += 1

    def _add_new(
        self,
        block: CheckedBlock,
        keys: pa.Array | None,
        seeds: pa.Array | None,
        new: list[int | RenderRequest],
    ) -> None:
        """Hand the block's new requests to the writer (their lines, or in a dry run, with
        ``keys`` and ``seeds`` None, their count) and count them for the estimate."""
        fast_new: list[int] | list[int | RenderRequest] = new
        slow: list[RenderRequest] = []
        is_fast: list[bool] = []
        if block.requests:  # the row checker's requests may be among them
            is_fast = [isinstance(entry, int) for entry in new]
            fast_new = list(itertools.compress(new, is_fast))
            slow = [entry for entry in new if not isinstance(entry, int)]
        lines = pa.array([], pa.string())
        counted = REQUEST_COUNTS.empty_table()
        counts_only = keys is None or seeds is None
        if fast_new and block.rows is not None:
            chosen = pa.array(fast_new, pa.int64())
            if keys is not None and seeds is not None:
                lines = shard_lines(block.rows, chosen, keys, seeds)
            counted = fast_counts(block.fast, chosen)
        if slow:
            # After the fast ones, then all put back in manifest order: each entry's place
            # among the fast (cumulative count of fast entries) or after them.
            fast_mask = pa.array(is_fast, pa.bool_())
            fast_at = pc.subtract(pc.cumulative_sum(pc.cast(fast_mask, pa.int64())), 1)
            slow_mask = pc.cast(pc.invert(fast_mask), pa.int64())
            slow_at = pc.add(pc.cumulative_sum(slow_mask), len(fast_new) - 1)
            at = pc.if_else(fast_mask, fast_at, slow_at)
            if not counts_only:
                slow_lines = [encode_line(PlanItem(r)) + "\n" for r in slow]
                lines = pa.concat_arrays([lines, pa.array(slow_lines, pa.string())]).take(at)
            counted = pa.concat_tables([counted, request_counts(slow)]).take(at)
        if counts_only:
            self.writer.add_count(len(new))
        else:
            self.writer.add(lines)
        if self.requests is None:
            self.tally.add(counted)
            self.tally.add_text(slow)
        else:
            self.requests.append(counted)

    def _alias_fast(self, fast: pa.Table, shorts: list[bytes], rows: list[int]) -> None:
        picked = fast.select(["row_id", "row_number", "tags", "priority"]).take(
            pa.array(rows, pa.int64())
        )
        for i, row in zip(rows, picked.to_pylist(), strict=True):
            place = self.seen[shorts[i]]
            alias = Alias(row["row_id"], row["row_number"], tuple(row["tags"] or ()))
            self.aliases[place].append((alias, row["priority"]))
            self.plan.folded += 1


#: bytes.translate table turning each 0 byte into 1 and each 1 into 0.
_NOT = bytes([1, 0]) + bytes(range(2, 256))


def _all_new(shorts: list[bytes], seen: dict[bytes, int]) -> bool:
    """Whether no key of ``shorts`` repeats, within them or in ``seen``."""
    return len(set(shorts)) == len(shorts) and seen.keys().isdisjoint(shorts)


def shard_writer(
    writes: ObjectStore | None, size: int, run_id: str, *, first_index: int = 0
) -> ShardWriter:
    """The plan's shard writer: in the calling thread for a local store, else a few threads."""
    threads = 0 if isinstance(writes, LocalStore) else WRITERS
    return ShardWriter(
        writes,
        size,
        lambda index: shard_key(run_id, index),
        threads=threads,
        first_index=first_index,
    )


#: Manifest rows planned at a time: a quarter of the reader's default, as each batch's
#: temporary columns and Python values set much of the plan's peak memory (on the
#: 1,000,000-row bench, ~50 MB less per process than 65,536 rows, at the same CPU).
PLAN_BATCH_ROWS = 16_384


@contextmanager
def planning_pool() -> Iterator[None]:
    """Arrow allocates from its jemalloc pool while planning, where it has one (and
    ``ARROW_DEFAULT_MEMORY_POOL`` chooses none): on the 1,000,000-row bench, about 2 s less
    CPU than the default mimalloc pool (fewer pages handed back and faulted in again) and a
    lower peak. Buffers keep the pool they came from after it is switched back."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        yield
        return
    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:  # a build without jemalloc (Windows, some macOS wheels)
        yield
        return
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


def plan_in_one(
    manifest: str | Path,
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
    """Plan ``manifest`` in this process, ``batch_size`` rows at a time, in shards of
    ``size`` requests (see the module docstring). ``plan`` is the empty plan to fill."""
    run_id = plan.run_id
    writes = None if dry_run else store
    reader = read_manifest(
        manifest,
        table=table,
        default_model=settings.default_model,
        strict=strict,
        resolve_input=resolve_input,
        settings=settings,
        batch_size=batch_size,
    )
    present = KeySet(catalog_keys.present_keys(store))
    writer = shard_writer(writes, size, run_id)
    planner = Planner(plan, present, writer)
    try:
        with writer:
            for block in reader.blocks():
                planner.take(block)
        del present, planner.present, planner.seen  # the key sets are done with
        if writes is not None and planner.aliases:
            attach_aliases(writes, run_id, size, writer.shard_keys, planner.aliases)
        make_durable(writes)
    except BaseException:
        if writes is not None:
            delete_keys(writes, writer.shard_keys)
        raise
    plan.shard_keys = writer.shard_keys if writes is not None else []
    plan.rejected = len(planner.rejects)
    plan.shards = writer.shards
    if writes is not None:
        plan.rejects_uri = catalog.write_rejects(
            writes, rejects_table(planner.rejects), run_id=run_id
        )
        data = dedup_part(writes, planner.dedup, run_id=run_id, settings=settings)
        planner.dedup = catalog_keys.DedupRows()
        plan.dedup_part_uri = put_dedup_part(writes, data, run_id=run_id)
        plan.dedup_part_uris = [plan.dedup_part_uri] if plan.dedup_part_uri else []
    # Priced last: its cost lines (often one per row) are not held while the part is built.
    price(plan, planner.tally, settings, table)
    return plan


def delete_keys(store: ObjectStore, keys: Iterable[str]) -> None:
    for key in keys:
        store.delete(key)
