"""Shard files: zstd'd JSON lines written by the streaming plan, gzip'd ones (written before
zstd) still read, so a run planned by an earlier version can be resumed."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pytest

from qwbatch.core.types import Alias, PlanItem, RenderRequest
from qwbatch.plan import shard_codec
from qwbatch.plan.shard_writer import ShardWriter
from qwbatch.plan.shards import decode_shard, encode_line, read_shard, write_shard
from qwbatch.storage.layout import shard_result_key
from qwbatch.storage.stores import LocalStore


def _item(number: int, aliases: int = 0) -> PlanItem:
    request = RenderRequest(
        row_id=f"row-{number}",
        row_number=number,
        request_key=f"{number:064x}",
        model="qwen-image-2.0",
        mode="generate",
        prompt=f"prompt {number}, 一只猫",
        seed=number,
        tags=(("sku", str(number)),),
    )
    return PlanItem(request, [Alias(f"again-{number}-{i}", 1000 + i) for i in range(aliases)])


def _text(items: list[PlanItem]) -> bytes:
    return "".join(encode_line(item) + "\n" for item in items).encode()


def test_a_gzip_shard_written_before_zstd_still_decodes(tmp_path: Path) -> None:
    items = [_item(i, aliases=i % 2) for i in range(5)]
    old = gzip.compress(_text(items), 5)  # what write_shard stored before zstd
    assert list(decode_shard(old)) == items
    store = LocalStore(tmp_path)
    store.put("runs/r/shards/shard-00000.jsonl.gz", old, content_type="application/gzip")
    assert list(read_shard(store, "runs/r/shards/shard-00000.jsonl.gz")) == items


def test_write_shard_writes_zstd_that_reads_back(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    items = [_item(i, aliases=1) for i in range(4)]
    key = write_shard(store, "r", 3, items)
    assert key == "runs/r/shards/shard-00003.jsonl.zst"
    data = store.get(key)
    assert data[:4] == b"\x28\xb5\x2f\xfd"  # the zstd frame magic
    assert shard_codec.decompress(data) == _text(items)
    assert list(read_shard(store, key)) == items
    with pytest.raises(ValueError, match="not a shard file"):
        shard_codec.decompress(b"{}")


def test_the_shard_writer_cuts_arrow_lines_into_shards_in_order(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    items = [_item(i) for i in range(11)]
    lines = [encode_line(item) + "\n" for item in items]
    writer = ShardWriter(store, 4, lambda i: f"runs/r/shards/shard-{i:05d}.jsonl.zst", threads=0)
    with writer:
        writer.add(pa.array(lines[:3]))  # fills part of a shard
        writer.add(pa.array(lines[3:10]).slice(0, 7))  # completes it, fills another, starts one
        writer.add(pa.array(lines[10:]))
    assert writer.shards == 3
    read = [list(read_shard(store, key)) for key in writer.shard_keys]
    assert read == [items[0:4], items[4:8], items[8:11]]


def test_a_result_sits_beside_its_shard_whatever_its_format() -> None:
    for suffix in (".jsonl.zst", ".jsonl.gz"):
        assert shard_result_key(f"runs/r/shards/shard-00003{suffix}") == (
            "runs/r/shards/shard-00003.result.json"
        )
