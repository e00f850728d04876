"""The streaming plan: a manifest planned batch by batch, in memory that does not grow with it.

``qwbatch.plan.planner.plan_run`` plans here every plan without a budget (a budget ranks the
whole plan before cutting it, so it plans in memory): :func:`plan_in_one` in this process,
or, from ``Settings.plan_split_rows`` rows, in two (``qwbatch.plan.split``), each running
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
   (``catalog_keys.DedupRows``); a row repeating an earlier row's key is kept as an
   ``Alias`` of that request (rare, so kept as an object).

When the manifest is read, the shards that gained aliases are rewritten with them, the
deduplicated rows are joined with the catalog's outputs (``catalog_keys.dedup_rows``) into
the ``plan`` catalog part, and the estimate is priced from per-(tag, model) counts. Peak
memory is about one record batch, one shard of lines, and ~100 bytes per distinct key (the
catalog's and the plan's), plus the deduplicated rows (compressed) until they are written.
Arrow allocates from its jemalloc pool meanwhile (:func:`planning_pool`).

A plan that fails (a strict reject, an unreadable file) deletes the shards it wrote.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

from qwbatch import budget as budgets
from qwbatch.catalog import key_set as catalog_keys
from qwbatch.catalog import table as catalog
from qwbatch.catalog.key_set import short_key
from qwbatch.core.costs import UNTAGGED, ZERO, CostLine, Estimate, PriceTable
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.core.types import Alias, PlanItem, RenderRequest
from qwbatch.core.uris import recorded_uri
from qwbatch.manifest import CheckedBlock, InputResolver, Reject, read_manifest, rejects_table
from qwbatch.manifest.vector import hex_keys, key_rows, shard_lines
from qwbatch.plan.model import Plan
from qwbatch.plan.shard_writer import WRITERS, ShardWriter
from qwbatch.plan.shards import decode_shard, encode_line, write_shard
from qwbatch.storage.layout import shard_key
from qwbatch.storage.stores import LocalStore, ObjectStore, make_durable

_EMPTY_LIST = pa.list_(pa.string())
_ENTRIES = pa.list_(
    pa.struct([pa.field("key", pa.string(), nullable=False), pa.field("value", pa.string())])
)


class Tally:
    """Requests and images of the plan by model and by (tag label, model), for the estimate."""

    def __init__(self) -> None:
        self.models: dict[str, list[int]] = {}
        #: Images by (model, size, inputs, quality): what prices FLUX and GPT Image requests.
        self.priced: dict[tuple[str, str | None, int, str | None], int] = {}
        self._tag_tables: list[pa.Table] = []
        #: Images of rows that expect text, by model (only row-checker rows can).
        self.text_images: dict[str, int] = {}

    def add_text(self, requests: Iterable[RenderRequest]) -> None:
        """Count the images of ``requests`` whose text will be checked (and may re-roll)."""
        for request in requests:
            if request.expected_text:
                images = self.text_images.get(request.model, 0)
                self.text_images[request.model] = images + request.n

    def add(self, requests: pa.Table) -> None:
        """Count requests: columns ``model``, ``n`` and ``tags`` (map<string,string>)."""
        if requests.num_rows == 0:
            return
        requests = requests.combine_chunks()
        model, n = requests["model"].chunk(0), requests["n"].chunk(0)
        by_model = pa.table({"model": model, "n": n}).group_by("model", use_threads=False)
        for row in by_model.aggregate([("n", "sum"), ("n", "count")]).to_pylist():
            line = self.models.setdefault(row["model"], [0, 0])
            line[0] += row["n_count"]
            line[1] += row["n_sum"]
        shapes = requests.select(["model", "size", "inputs", "quality", "n"])
        grouped = shapes.group_by(["model", "size", "inputs", "quality"], use_threads=False)
        for row in grouped.aggregate([("n", "sum")]).to_pylist():
            shape = (row["model"], row["size"], row["inputs"], row["quality"])
            self.priced[shape] = self.priced.get(shape, 0) + row["n_sum"]
        tags = requests["tags"].chunk(0).cast(_ENTRIES)  # list kernels do not take maps
        flat = tags.flatten()
        keys, values = flat.field("key"), flat.field("value")
        parents = pc.list_parent_indices(tags)
        labels = pc.if_else(
            pc.equal(values, ""), keys, pc.binary_join_element_wise(keys, values, "=")
        )
        untagged = pc.indices_nonzero(pc.equal(pc.fill_null(pc.list_value_length(tags), 0), 0))
        entries = pa.table(
            {
                "label": pa.chunked_array(
                    [labels, pa.array([UNTAGGED] * len(untagged), pa.string())], pa.string()
                ),
                "model": pa.chunked_array([pc.take(model, parents), pc.take(model, untagged)]),
                "n": pa.chunked_array([pc.take(n, parents), pc.take(n, untagged)]),
            }
        )
        self._tag_tables.append(
            entries.group_by(["label", "model"], use_threads=False)
            .aggregate([("n", "count"), ("n", "sum")])
            .select(list(_TAG_COLUMNS))
        )

    def estimate(self, prices: PriceTable) -> Estimate:
        """The estimate ``costs.estimate`` gives for the same requests."""
        result = Estimate(region=prices.region, currency=prices.currency)
        shaped: dict[str, Decimal] = {}
        for (model, size, inputs, quality), images in self.priced.items():
            if prices.priced_per_request(model):
                each = prices.price_for(model, size, inputs=inputs, quality=quality) or ZERO
                shaped[model] = shaped.get(model, ZERO) + images * each
        for model, (requests, images) in self.models.items():
            price = prices.unit_price(model)
            if price is None:
                result.unpriced[model] = images
            else:
                result.unit_prices[model] = price
            cost = shaped[model] if model in shaped else images * (price or ZERO)
            result.requests += requests
            result.images += images
            result.total += cost
            result.by_model[model] = CostLine(requests, images, cost)
        # A model priced per request shares its cost among its tag lines by images.
        price_of = {
            model: (
                shaped[model] / images
                if model in shaped and images
                else prices.unit_price(model) or ZERO
            )
            for model, (_, images) in self.models.items()
        }
        for model, text_images in self.text_images.items():
            result.add_text(text_images, prices.unit_price(model) or ZERO)
        # Tag lines are often one per row (an id as a tag): share their equal costs.
        costs: dict[tuple[str, int], Decimal] = {}
        by_tag = result.by_tag
        # Each block's counts added up here, a slice of Python values at a time: a group-by
        # of them all would hold a hash of every label (the plan's largest transient), and
        # summing per block gives the same lines.
        lines = (
            zip(*(chunk[name].to_pylist() for name in _TAG_COLUMNS), strict=True)
            for table in self._tag_tables
            for chunk in table.to_batches(max_chunksize=_TAG_SLICE)
        )
        for label, model, requests, images in itertools.chain.from_iterable(lines):
            tag_cost = costs.get((model, images))
            if tag_cost is None:
                tag_cost = costs[(model, images)] = images * price_of[model]
            line = by_tag.get(label)
            if line is None:
                by_tag[label] = CostLine(requests, images, tag_cost)
            else:
                line.requests += requests
                line.images += images
                line.cost += tag_cost
        return result


_TAG_COLUMNS = ("label", "model", "n_count", "n_sum")
_TAG_SLICE = 32_768


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

    def take(self, block: CheckedBlock) -> None:
        """Plan one block's rows, in manifest order."""
        self.plan.rows_read += block.num_rows
        self.rejects.extend(block.rejects)
        fast = block.fast
        digests, seeds = key_rows(block.rows)
        slow = block.requests
        shorts = [digest[:16] for digest in digests]
        # Which keys the catalog has, for the whole block at once (one round trip when the
        # catalog's keys are in the other process of a split plan).
        hits = self.present.hits([*shorts, *(short_key(r.request_key) for r in slow)])
        new: list[int | RenderRequest] = []
        dedup_fast: list[int] = []
        alias_fast: list[int] = []
        slow_dedup: list[RenderRequest] = []
        seen = self.seen
        fast_rows: list[int] = fast["row_number"].to_pylist() if slow else []
        next_slow = 0
        for i, short in enumerate(shorts):
            while next_slow < len(slow) and slow[next_slow].row_number < fast_rows[i]:
                self._take_slow(slow[next_slow], hits[len(shorts) + next_slow], new, slow_dedup)
                next_slow += 1
            if hits[i]:
                dedup_fast.append(i)
            elif short in seen:
                alias_fast.append(i)
            else:
                seen[short] = len(seen)
                new.append(i)
        for at in range(next_slow, len(slow)):
            self._take_slow(slow[at], hits[len(shorts) + at], new, slow_dedup)

        keys, seed_array = hex_keys(digests), pa.array(seeds, pa.int64())
        self._add_new(block, keys, seed_array, new)
        deduplicated = [_fast_dedup(fast, keys, seed_array, dedup_fast)] if dedup_fast else []
        if slow_dedup:
            deduplicated.append(_slow_dedup(slow_dedup))
        if deduplicated:
            schema = catalog_keys.REQUEST_SCHEMA
            self.dedup.add(pa.concat_tables([rows.cast(schema) for rows in deduplicated]))
        self.plan.deduplicated += len(dedup_fast) + len(slow_dedup)
        if alias_fast:
            self._alias_fast(fast, shorts, alias_fast)

    def _take_slow(
        self,
        request: RenderRequest,
        present: int,
        new: list[int | RenderRequest],
        dedup: list[RenderRequest],
    ) -> None:
        if present:
            dedup.append(request)
            return
        short = short_key(request.request_key)
        place = self.seen.get(short)
        if place is None:
            self.seen[short] = len(self.seen)
            new.append(request)
            return
        alias = Alias(
            request.row_id,
            request.row_number,
            request.tags,
            request.input_images,
            request.input_notes,
        )
        self.aliases[place].append((alias, request.priority))
        self.plan.folded += 1

    def _add_new(
        self,
        block: CheckedBlock,
        keys: pa.Array,
        seeds: pa.Array,
        new: list[int | RenderRequest],
    ) -> None:
        fast_new = [i for i in new if isinstance(i, int)]
        lines = pa.array([], pa.string())
        counted = REQUEST_COUNTS.empty_table()
        if fast_new and block.rows is not None:
            chosen = pa.array(fast_new, pa.int64())
            lines = shard_lines(block.rows, chosen, keys, seeds)
            counted = _fast_counts(block.fast, chosen)
        if len(fast_new) < len(new):
            # Rows of the row checker among them: after the fast ones, then all put back in
            # manifest order.
            slow = [entry for entry in new if not isinstance(entry, int)]
            order: list[int] = []
            fast_at, slow_at = 0, len(fast_new)
            for entry in new:
                if isinstance(entry, int):
                    order.append(fast_at)
                    fast_at += 1
                else:
                    order.append(slow_at)
                    slow_at += 1
            at = pa.array(order, pa.int64())
            slow_lines = pa.array([encode_line(PlanItem(r)) + "\n" for r in slow], pa.string())
            lines = pa.concat_arrays([lines, slow_lines]).take(at)
            counted = pa.concat_tables([counted, _request_counts(slow)]).take(at)
        self.writer.add(lines)
        if self.requests is None:
            self.tally.add(counted)
            self.tally.add_text(entry for entry in new if not isinstance(entry, int))
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


#: What the estimate needs of a request (size, inputs and quality price FLUX and GPT Image).
REQUEST_COUNTS = pa.schema(
    [
        ("model", pa.string()),
        ("n", pa.int64()),
        ("tags", pa.map_(pa.string(), pa.string())),
        ("size", pa.string()),
        ("inputs", pa.int64()),
        ("quality", pa.string()),
    ]
)


def _request_counts(requests: list[RenderRequest]) -> pa.Table:
    return pa.table(
        {
            "model": [r.model for r in requests],
            "n": [r.n for r in requests],
            "tags": [list(r.tags) for r in requests],
            "size": [r.size for r in requests],
            "inputs": [len(r.input_images) for r in requests],
            "quality": [_quality(r) for r in requests],
        },
        schema=REQUEST_COUNTS,
    )


def _quality(request: RenderRequest) -> str | None:
    quality = dict(request.params).get("quality")
    return str(quality) if quality else None


def _fast_counts(fast: pa.Table, chosen: pa.Array) -> pa.Table:
    """REQUEST_COUNTS of fast rows: no edit inputs and no params (those go slow)."""
    picked = fast.select(["model", "n", "tags", "size"]).take(chosen)
    rows = picked.num_rows
    return picked.append_column("inputs", pa.array([0] * rows, pa.int64())).append_column(
        "quality", pa.nulls(rows, pa.string())
    )


def _fast_dedup(fast: pa.Table, keys: pa.Array, seeds: pa.Array, rows: list[int]) -> pa.Table:
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
        }
    )


def _slow_dedup(requests: list[RenderRequest]) -> pa.Table:
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
        },
        schema=schema,
    )


def with_aliases(item: PlanItem, found: Iterable[tuple[Alias, int | None]]) -> None:
    """Fold rows repeating ``item``'s request onto it, in order: each an alias, its priority
    ranked with the request's (``budget.rank``)."""
    for alias, priority in found:
        item.aliases.append(alias)
        other = dataclasses.replace(item.request, priority=priority)
        item.request = budgets.rank(item.request, other)


def attach_aliases(
    store: ObjectStore,
    run_id: str,
    size: int,
    shard_keys: list[str],
    aliases: dict[int, list[tuple[Alias, int | None]]],
) -> None:
    """Rewrite the shards whose requests gained aliases, with them (priority as ``rank``)."""
    by_shard: dict[int, list[tuple[int, list[tuple[Alias, int | None]]]]] = defaultdict(list)
    for place, found in aliases.items():
        by_shard[place // size].append((place % size, found))
    for index, entries in sorted(by_shard.items()):
        items = list(decode_shard(store.get(shard_keys[index])))
        for offset, found in entries:
            with_aliases(items[offset], found)
        write_shard(store, run_id, index, items)


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


def price(plan: Plan, tally: Tally, settings: Settings, table: ModelTable) -> None:
    """Set the plan's estimate and the counts it gives (requests, images)."""
    estimate = tally.estimate(PriceTable.load(settings, table))
    plan.estimate = estimate
    plan.requests = estimate.requests
    plan.images = estimate.images
    plan.images_by_model = {model: line.images for model, line in estimate.by_model.items()}


#: Rows of the deduplicated part encoded at a time (one row group each).
DEDUP_SLICE_ROWS = 32_768


def dedup_part(
    store: ObjectStore, planner: Planner, *, run_id: str, settings: Settings
) -> bytes | None:
    """The deduplicated rows joined with the catalog's outputs: the bytes of the run's
    catalog part of them (None when there are none). The rows are dropped from ``planner``."""
    rows = catalog_keys.dedup_rows(
        store,
        planner.dedup,
        run_id=run_id,
        currency=settings.currency(),
        slice_rows=DEDUP_SLICE_ROWS,
    )
    planner.dedup = catalog_keys.DedupRows()
    return catalog.encode_tables(rows, use_dictionary=list(catalog_keys.DICTIONARY_COLUMNS))


def put_dedup_part(
    store: ObjectStore, data: bytes | None, *, run_id: str, label: str = "plan"
) -> str | None:
    """Store :func:`dedup_part`'s bytes as ``part-<run_id>-<label>.parquet``; its URI."""
    if data is None:
        return None
    return catalog.put_part(store, data, run_id=run_id, label=label, unique=False)


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
        data = dedup_part(writes, planner, run_id=run_id, settings=settings)
        plan.dedup_part_uri = put_dedup_part(writes, data, run_id=run_id)
        plan.dedup_part_uris = [plan.dedup_part_uri] if plan.dedup_part_uri else []
    # Priced last: its cost lines (often one per row) are not held while the part is built.
    price(plan, planner.tally, settings, table)
    return plan


def delete_keys(store: ObjectStore, keys: Iterable[str]) -> None:
    for key in keys:
        store.delete(key)
