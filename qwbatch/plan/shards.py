"""Shard files: the unit of work a Prefect task takes, one :class:`PlanItem` per line.

A shard holds requests, not results, so any worker can pick it up: JSON lines compressed
with zstd (``qwbatch.plan.shard_codec``), written under ``runs/<run_id>/shards/``
(:func:`qwbatch.storage.layout.shard_key`). Internal to a run; never edited by hand. Every
planning path writes and reads them through here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Any

from qwbatch.core.types import Alias, PlanItem, RenderRequest
from qwbatch.plan import shard_codec
from qwbatch.storage.layout import shard_key
from qwbatch.storage.stores import ObjectStore


def _encode_item(item: PlanItem) -> dict[str, Any]:
    request = asdict(item.request)
    for name in ("expected_text", "params"):
        if not request[name]:
            # Lines without them stay byte-equal to the column-wise writer's (plan.stream).
            del request[name]
    return {"request": request, "aliases": [asdict(a) for a in item.aliases]}


def _decode_item(data: dict[str, Any]) -> PlanItem:
    req = dict(data["request"])
    for name in ("input_images", "input_sha256", "input_notes", "expected_text"):
        req[name] = tuple(req.get(name, ()))
    req["tags"] = tuple(tuple(pair) for pair in req["tags"])
    req["params"] = tuple(tuple(pair) for pair in req.get("params", ()))
    aliases = [
        Alias(
            a["row_id"],
            a["row_number"],
            tuple(tuple(p) for p in a["tags"]),
            tuple(a.get("input_images", ())),
            tuple(a.get("input_notes", ())),
        )
        for a in data["aliases"]
    ]
    return PlanItem(RenderRequest(**req), aliases)


def encode_line(item: PlanItem) -> str:
    """One shard file line (JSON, no newline) for ``item``."""
    return json.dumps(_encode_item(item), ensure_ascii=False)


def write_shard(store: ObjectStore, run_id: str, index: int, items: Sequence[PlanItem]) -> str:
    lines = "".join(encode_line(i) + "\n" for i in items)
    key = shard_key(run_id, index)
    data = shard_codec.compress(lines.encode("utf-8"))
    store.put(key, data, content_type=shard_codec.CONTENT_TYPE)
    return key


def read_shard(store: ObjectStore, key: str) -> Iterator[PlanItem]:
    return decode_shard(store.get(key))


def decode_shard(data: bytes) -> Iterator[PlanItem]:
    """The items of a shard file's bytes (zstd, or gzip as written before)."""
    for line in shard_codec.decompress(data).decode("utf-8").splitlines():
        if line:
            yield _decode_item(json.loads(line))
