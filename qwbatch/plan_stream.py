"""The streaming plan: a manifest planned batch by batch, in memory that does not grow with it.

``qwbatch.plan.plan_run`` calls :func:`stream_plan` for every plan without a budget (a
budget ranks the whole plan before cutting it, so it plans in memory). Per record batch:

1. ``ManifestReader.blocks`` validates the common rows column-wise (``manifest_vector``)
   and the rest one by one;
2. each row's key is one sha256 over its canonical prefix (``manifest_vector.key_rows``);
3. a 16-byte short key is looked up in the catalog's keys (``catalog_keys.present_keys``,
   read once, key column only) and in the keys already planned (a dict short key → the
   request's place in the plan);
4. new requests' shard lines are built in Arrow and handed to a ``ShardWriter``, which
   writes each shard as it fills; deduplicated rows stay as Arrow columns; a row repeating an
   earlier row's key is kept as an ``Alias`` of that request (rare, so kept as an object).

When the manifest is read, the shards that gained aliases are rewritten with them, the
deduplicated rows are joined with the catalog's outputs (``catalog_keys.dedup_rows``) into
the ``plan`` catalog part, and the estimate is priced from per-(tag, model) counts. Peak
memory is about one record batch, one shard of lines, and ~100 bytes per distinct key (the
catalog's and the plan's), plus the deduplicated rows' columns until they are written.

A plan that fails (a strict reject, an unreadable file) deletes the shards it wrote.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from qwbatch import budget as budgets
from qwbatch import catalog, catalog_keys
from qwbatch.config import Settings
from qwbatch.costs import UNTAGGED, ZERO, CostLine, Estimate, PriceTable, tag_labels
from qwbatch.manifest import (
    CheckedBlock,
    InputResolver,
    Reject,
    gc_paused,
    read_manifest,
    rejects_table,
)
from qwbatch.manifest_vector import hex_keys, key_rows, shard_lines
from qwbatch.models import RenderRequest
from qwbatch.plan import Alias, Plan, PlanItem, decode_shard, encode_line, shard_key, write_shard
from qwbatch.registry import ModelTable
from qwbatch.shard_writer import WRITERS, ShardWriter
from qwbatch.storage import LocalStore, ObjectStore, make_durable
from qwbatch.uris import recorded_uri

_EMPTY_LIST = pa.list_(pa.string())
_ENTRIES = pa.list_(
    pa.struct([pa.field("key", pa.string(), nullable=False), pa.field("value", pa.string())])
)


class _Tally:
    """Requests and images of the plan by model and by (tag label, model), for the estimate."""

    def __init__(self) -> None:
        self.models: dict[str, list[int]] = {}
        self._tag_tables: list[pa.Table] = []
        self._tag_rows: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])

    def add_columns(self, model: pa.Array, n: pa.Array, tags: pa.Array) -> None:
        """Count fast rows: model and n per row, tags as map<string,string>."""
        by_model = pa.table({"model": model, "n": n}).group_by("model", use_threads=False)
        for row in by_model.aggregate([("n", "sum"), ("n", "count")]).to_pylist():
            line = self.models.setdefault(row["model"], [0, 0])
            line[0] += row["n_count"]
            line[1] += row["n_sum"]
        tags = tags.cast(_ENTRIES)  # list kernels do not take maps
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
            entries.group_by(["label", "model"], use_threads=False).aggregate(
                [("n", "count"), ("n", "sum")]
            )
        )

    def add_request(self, request: RenderRequest) -> None:
        line = self.models.setdefault(request.model, [0, 0])
        line[0] += 1
        line[1] += request.n
        for label in tag_labels(request.tags):
            counts = self._tag_rows[(label, request.model)]
            counts[0] += 1
            counts[1] += request.n

    def estimate(self, prices: PriceTable) -> Estimate:
        """The estimate ``costs.estimate`` gives for the same requests."""
        result = Estimate(region=prices.region, currency=prices.currency)
        for model, (requests, images) in self.models.items():
            price = prices.unit_price(model)
            if price is None:
                result.unpriced[model] = images
            else:
                result.unit_prices[model] = price
            cost = images * (price or ZERO)
            result.requests += requests
            result.images += images
            result.total += cost
            result.by_model[model] = CostLine(requests, images, cost)
        tables = list(self._tag_tables)
        if self._tag_rows:
            labels, models = zip(*self._tag_rows, strict=True)
            counts = list(self._tag_rows.values())
            tables.append(
                pa.table(
                    {
                        "label": pa.array(labels, pa.string()),
                        "model": pa.array(models, pa.string()),
                        "n_count": pa.array([c[0] for c in counts], pa.int64()),
                        "n_sum": pa.array([c[1] for c in counts], pa.int64()),
                    }
                )
            )
        if not tables:
            return result
        merged = pa.concat_tables(tables, promote_options="permissive")
        grouped = merged.group_by(["label", "model"], use_threads=False).aggregate(
            [("n_count", "sum"), ("n_sum", "sum")]
        )
        price_of = {model: prices.unit_price(model) or ZERO for model in self.models}
        # Tag lines are often one per row (an id as a tag): share their equal costs.
        costs: dict[tuple[str, int], Decimal] = {}
        by_tag = result.by_tag
        for label, model, requests, images in zip(
            grouped["label"].to_pylist(),
            grouped["model"].to_pylist(),
            grouped["n_count_sum"].to_pylist(),
            grouped["n_sum_sum"].to_pylist(),
            strict=True,
        ):
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


class _Planner:
    """The state of one streaming plan between record batches."""

    def __init__(self, plan: Plan, present: set[bytes], writer: ShardWriter) -> None:
        self.plan = plan
        self.present = present
        self.writer = writer
        #: short key → place of its request in the plan (its shard is place // shard size)
        self.seen: dict[bytes, int] = {}
        self.rejects: list[Reject] = []
        self.dedup: list[pa.Table] = []
        self.aliases: dict[int, list[tuple[Alias, int | None]]] = defaultdict(list)
        self.tally = _Tally()

    def take(self, block: CheckedBlock) -> None:
        """Plan one block's rows, in manifest order."""
        self.plan.rows_read += block.num_rows
        self.rejects.extend(block.rejects)
        fast = block.fast
        digests, seeds = key_rows(block.rows)
        new: list[int | RenderRequest] = []
        dedup_fast: list[int] = []
        alias_fast: list[int] = []
        slow_dedup: list[RenderRequest] = []
        present, seen = self.present, self.seen
        slow = block.requests
        fast_rows: list[int] = fast["row_number"].to_pylist() if slow else []
        next_slow = 0
        for i, digest in enumerate(digests):
            while next_slow < len(slow) and slow[next_slow].row_number < fast_rows[i]:
                self._take_slow(slow[next_slow], new, slow_dedup)
                next_slow += 1
            short = digest[:16]
            if short in present:
                dedup_fast.append(i)
            elif short in seen:
                alias_fast.append(i)
            else:
                seen[short] = len(seen)
                new.append(i)
        for request in slow[next_slow:]:
            self._take_slow(request, new, slow_dedup)

        keys, seed_array = hex_keys(digests), pa.array(seeds, pa.int64())
        self._add_new(block, keys, seed_array, new)
        if dedup_fast:
            self.dedup.append(_fast_dedup(fast, keys, seed_array, dedup_fast))
        if slow_dedup:
            self.dedup.append(_slow_dedup(slow_dedup))
        self.plan.deduplicated += len(dedup_fast) + len(slow_dedup)
        if alias_fast:
            self._alias_fast(fast, digests, alias_fast)

    def _take_slow(
        self, request: RenderRequest, new: list[int | RenderRequest], dedup: list[RenderRequest]
    ) -> None:
        short = catalog_keys.short_key(request.request_key)
        if short in self.present:
            dedup.append(request)
            return
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
        if fast_new and block.rows is not None:
            chosen = pa.array(fast_new, pa.int64())
            lines = shard_lines(block.rows, chosen, keys, seeds)
            taken = block.fast.select(["model", "n", "tags"]).take(chosen).combine_chunks()
            self.tally.add_columns(
                taken["model"].chunk(0), taken["n"].chunk(0), taken["tags"].chunk(0)
            )
        if len(fast_new) == len(new):
            self.writer.add(lines)
            return
        # Rows of the row checker among them: their lines after the fast ones, then all
        # put back in manifest order.
        slow_lines: list[str] = []
        order: list[int] = []
        fast_at = 0
        for entry in new:
            if isinstance(entry, int):
                order.append(fast_at)
                fast_at += 1
            else:
                self.tally.add_request(entry)
                order.append(len(fast_new) + len(slow_lines))
                slow_lines.append(encode_line(PlanItem(entry)) + "\n")
        every = pa.concat_arrays([lines, pa.array(slow_lines, pa.string())])
        self.writer.add(every.take(pa.array(order, pa.int64())))

    def _alias_fast(self, fast: pa.Table, digests: list[bytes], rows: list[int]) -> None:
        picked = fast.select(["row_id", "row_number", "tags", "priority"]).take(
            pa.array(rows, pa.int64())
        )
        for i, row in zip(rows, picked.to_pylist(), strict=True):
            place = self.seen[digests[i][:16]]
            alias = Alias(row["row_id"], row["row_number"], tuple(row["tags"] or ()))
            self.aliases[place].append((alias, row["priority"]))
            self.plan.folded += 1


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


def _attach_aliases(
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
            item = items[offset]
            for alias, priority in found:
                item.aliases.append(alias)
                other = dataclasses.replace(item.request, priority=priority)
                item.request = budgets.rank(item.request, other)
        write_shard(store, run_id, index, items)


def stream_plan(*args: Any, **kwargs: Any) -> Plan:
    """Plan ``manifest`` as ``plan_run`` does without a budget, batch by batch (see
    :func:`_stream_plan` for the arguments). The cyclic garbage collector is paused: the
    plan's objects form no cycles, and its full collections would walk every key kept."""
    with gc_paused():
        return _stream_plan(*args, **kwargs)


def _stream_plan(
    manifest: str | Path,
    store: ObjectStore | None,
    *,
    settings: Settings,
    table: ModelTable,
    run_id: str,
    strict: bool = False,
    shard_size: int | None = None,
    dry_run: bool = False,
    resolve_input: InputResolver | None = None,
    batch_size: int = 65_536,
) -> Plan:
    plan = Plan(run_id=run_id)
    present = catalog_keys.present_keys(store)
    size = shard_size or settings.shard_size
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
    threads = 0 if isinstance(writes, LocalStore) else WRITERS
    writer = ShardWriter(writes, size, lambda index: shard_key(run_id, index), threads=threads)
    planner = _Planner(plan, present, writer)
    try:
        with writer:
            for block in reader.blocks():
                planner.take(block)
        del present, planner.present, planner.seen  # the key sets are done with
        if writes is not None and planner.aliases:
            _attach_aliases(writes, run_id, size, writer.shard_keys, planner.aliases)
        make_durable(writes)
    except BaseException:
        if writes is not None:
            _delete(writes, writer.shard_keys)
        raise
    plan.shard_keys = writer.shard_keys if writes is not None else []
    plan.rejected = len(planner.rejects)
    estimate = planner.tally.estimate(PriceTable.load(settings, table))
    plan.estimate = estimate
    plan.requests = estimate.requests
    plan.images = estimate.images
    plan.images_by_model = {model: line.images for model, line in estimate.by_model.items()}
    plan.shards = writer.shards
    if writes is None:
        return plan
    plan.rejects_uri = catalog.write_rejects(writes, rejects_table(planner.rejects), run_id=run_id)
    rows = catalog_keys.dedup_rows(
        writes, planner.dedup, run_id=run_id, currency=settings.currency()
    )
    planner.dedup = []
    plan.dedup_part_uri = catalog.write_tables(
        writes,
        rows,
        run_id=run_id,
        label="plan",
        unique=False,
        use_dictionary=list(catalog_keys.DICTIONARY_COLUMNS),
    )
    return plan


def _delete(store: ObjectStore, keys: Iterable[str]) -> None:
    for key in keys:
        store.delete(key)
