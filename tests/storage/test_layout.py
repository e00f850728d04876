"""Every key layout under DEST, pinned: a changed key orphans what earlier runs stored (a
rerun would not find its outputs, its plan or its journal, and would pay again)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from qwbatch.storage import layout

KEY = "ab" + "c" * 62
SHA = "0f" + "e" * 62
SHARD = "runs/r-1/shards/shard-00003.jsonl.zst"
RESULT = "runs/r-1/shards/shard-00003.result.json"
JOURNAL = "runs/r-1/journal/shard-00003/"
COMPACTION = "part-compact-s-t"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (layout.output_key(KEY, 2), f"images/ab/{KEY}/2.png"),
        (layout.request_doc_key(KEY), f"images/ab/{KEY}/request.json"),
        (layout.thumb_key(KEY, 0), f"thumbs/ab/{KEY}/0.webp"),
        (layout.delivered_key(KEY, 1), f"delivered/ab/{KEY}/1.png"),
        (layout.staged_key(SHA), f"inputs/0f/{SHA}"),
        (layout.part_key("r-1", "shard-00003"), "catalog/part-r-1-shard-00003.parquet"),
        (layout.part_key("r-1", "plan", "-0a1b2c3d"), "catalog/part-r-1-plan-0a1b2c3d.parquet"),
        (layout.run_parts_prefix("r-1"), "catalog/part-r-1-"),
        (layout.catalog_key("part-x.parquet"), "catalog/part-x.parquet"),
        (layout.compaction_name("20260101T0000Z", "a1b2"), "part-compact-20260101T0000Z-a1b2"),
        (layout.compacted_part_key(COMPACTION, 7), f"catalog/{COMPACTION}-007.parquet"),
        (layout.compaction_marker_key(COMPACTION), f"catalog/_compaction/{COMPACTION}.json"),
        (layout.rejects_key("r-1"), "rejects/rejects-r-1.parquet"),
        (layout.review_key("20260101-0a1b2c3d"), "reviews/review-20260101-0a1b2c3d.parquet"),
        (layout.quarantine_key("catalog/part-x.parquet"), "quarantine/catalog/part-x.parquet"),
        (layout.table_manifest_key(SHA), f"manifests/table-{SHA[:24]}.parquet"),
        (layout.lease_key(), "lease/run.json"),
        (layout.learned_limit_key("a/1", "qwen image"), "limits/learned/qwen%20image@a%2F1.json"),
        (layout.index_prefix("fp"), "runs/_index/fp/"),
        (layout.index_key("fp", "r-1"), "runs/_index/fp/r-1"),
        (layout.run_prefix("r-1"), "runs/r-1/"),
        (layout.plan_key("r-1"), "runs/r-1/plan.json"),
        (layout.summary_key("r-1"), "runs/r-1/summary.json"),
        (layout.run_sheet_key("r-1"), "runs/r-1/contact-sheet.png"),
        (layout.shards_prefix("r-1"), "runs/r-1/shards/"),
        (layout.shard_key("r-1", 3), SHARD),
        (layout.shard_result_key(SHARD), RESULT),
        (layout.shard_result_key(SHARD.replace(".zst", ".gz")), RESULT),  # planned before zstd
        (layout.shard_lease_key(SHARD), "runs/r-1/leases/shard-00003.json"),
        (layout.journal_prefix("r-1"), "runs/r-1/journal/"),
        (layout.journal_prefix("r-1", "shard-00003"), JOURNAL),
        (layout.journal_key(JOURNAL, "w1", 12), f"{JOURNAL}w1-00000012.jsonl"),
    ],
)  # fmt: skip
def test_every_key_is_where_it_always_was(key: str, expected: str) -> None:
    assert key == expected


def test_names_read_back_from_keys() -> None:
    assert layout.shard_label(SHARD) == "shard-00003"
    assert layout.shard_index("shard-00003.result.json") == 3
    assert layout.shard_index("summary.json") is None
    assert layout.is_shard_result(RESULT)
    assert layout.output_of(layout.output_key(KEY, 4), "other", 0) == (KEY, 4)
    assert layout.output_of(None, "own", 1) == ("own", 1)


def test_arrow_columns_give_the_same_keys() -> None:
    keys = pa.array([KEY, KEY])
    indexes = pa.array([0, 3])
    assert layout.output_keys(keys, indexes).to_pylist() == [
        layout.output_key(KEY, 0),
        layout.output_key(KEY, 3),
    ]
    targets = pa.array(["300*250", None])
    assert layout.delivered_keys(keys, indexes, targets).to_pylist() == [
        layout.delivered_key(KEY, 0),
        None,
    ]
