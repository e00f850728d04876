"""Aliases: later manifest rows asking for a request already planned, folded onto it (they
are rendered once and all recorded), and the shards rewritten with them."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable

from qwbatch import budget as budgets
from qwbatch.core.types import Alias, PlanItem, RenderRequest
from qwbatch.plan.shards import decode_shard, write_shard
from qwbatch.storage.stores import ObjectStore


def alias_of(request: RenderRequest) -> Alias:
    """The alias a row repeating an earlier row's request becomes."""
    return Alias(
        request.row_id,
        request.row_number,
        request.tags,
        request.input_images,
        request.input_notes,
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
