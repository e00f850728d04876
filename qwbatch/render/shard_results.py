"""Shard results in the store: how a shard rendered on another worker reports back to its run.

When a run's shards execute as separate flow runs (``flows/fanout.py``), possibly on other
machines, the run's flow cannot receive their :class:`~qwbatch.render.engine.ShardResult` in memory,
and Prefect result persistence would need storage shared by every worker. So each shard writes
its small result beside its shard file, in the run's own store::

    runs/<run_id>/shards/shard-00003.jsonl.zst       the requests (written by the plan)
    runs/<run_id>/shards/shard-00003.result.json     the outcome (written after the shard)

The run's flow reads them once the shard flow runs have ended. A result only summarises; the
catalog part it names remains the record of what was rendered.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import fields

from qwbatch.core.errors import ObjectNotFoundError, StorageError
from qwbatch.render.engine import ShardResult
from qwbatch.storage.layout import shard_result_key
from qwbatch.storage.stores import ObjectStore


def write_shard_result(store: ObjectStore, result: ShardResult) -> str:
    """Store ``result`` beside its shard file (replacing an earlier attempt's); its URI."""
    # Not dataclasses.asdict: it rebuilds the Counter from (key, value) pairs, counting them.
    data = {f.name: getattr(result, f.name) for f in fields(result)}
    data["statuses"] = dict(result.statuses)
    body = json.dumps(data, sort_keys=True).encode()
    key = shard_result_key(result.shard_key)
    store.put(key, body, content_type="application/json")
    return store.uri(key)


def read_shard_result(store: ObjectStore, shard_key: str) -> ShardResult | None:
    """The stored result of ``shard_key``; None when the shard has not finished."""
    try:
        data = json.loads(store.get(shard_result_key(shard_key)))
    except ObjectNotFoundError:
        return None
    except ValueError as exc:
        raise StorageError(
            f"unreadable shard result {store.uri(shard_result_key(shard_key))}"
        ) from exc
    data["statuses"] = Counter(data.get("statuses", {}))
    return ShardResult(**data)


def group_shards(shard_keys: Sequence[str], per_group: int) -> list[list[str]]:
    """``shard_keys`` cut into consecutive groups of at most ``per_group`` (order kept)."""
    if per_group < 1:
        raise ValueError(f"per_group must be at least 1, got {per_group}")
    return [list(shard_keys[i : i + per_group]) for i in range(0, len(shard_keys), per_group)]
