"""Shard results in the store: round trip, absence, corruption, grouping."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from qwbatch.core.errors import StorageError
from qwbatch.render.engine import ShardResult
from qwbatch.render.shard_results import (
    group_shards,
    read_shard_result,
    write_shard_result,
)
from qwbatch.storage.layout import shard_result_key
from qwbatch.storage.stores import LocalStore

SHARD = "runs/r1/shards/shard-00003.jsonl.gz"


def test_a_result_round_trips_beside_its_shard(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    result = ShardResult(
        shard_key=SHARD,
        part_uri="s3://b/catalog/part.parquet",
        statuses=Counter({"succeeded": 9, "failed": 1}),
        requests=10,
        images=9,
        billed_images=9,
        cost=0.27,
        attempts=12,
        wall_s=3.5,
    )

    uri = write_shard_result(store, result)

    assert shard_result_key(SHARD) == "runs/r1/shards/shard-00003.result.json"
    assert uri == store.uri(shard_result_key(SHARD))
    again = read_shard_result(store, SHARD)
    assert again == result
    assert isinstance(again.statuses, Counter)


def test_an_unfinished_shard_has_no_result(tmp_path: Path) -> None:
    assert read_shard_result(LocalStore(tmp_path), SHARD) is None


def test_an_unreadable_result_is_a_storage_error(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put(shard_result_key(SHARD), b"{not json")
    with pytest.raises(StorageError, match="unreadable shard result"):
        read_shard_result(store, SHARD)


def test_groups_keep_order_and_size() -> None:
    keys = [f"k{i}" for i in range(7)]
    assert group_shards(keys, 3) == [["k0", "k1", "k2"], ["k3", "k4", "k5"], ["k6"]]
    assert group_shards(keys, 1) == [[k] for k in keys]
    assert group_shards([], 2) == []
    with pytest.raises(ValueError, match="at least 1"):
        group_shards(keys, 0)
