"""The streaming plan: column-wise keys equal keys.py's, and it plans what the in-memory
plan (the budget path) plans: shards, aliases, deduplicated rows, rejects, estimate."""

from __future__ import annotations

import dataclasses
import io
import json
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from plan_helpers import earlier_catalog
from typer.testing import CliRunner

from qwbatch.budget.policy import BudgetPolicy
from qwbatch.catalog import key_set as catalog_keys
from qwbatch.catalog import table as catalog
from qwbatch.cli import app
from qwbatch.core.costs import TagLines
from qwbatch.core.errors import ManifestError
from qwbatch.core.keys import SEED_MAX, RequestFields, key_and_seed
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.core.types import PlanItem
from qwbatch.manifest.reader import read_manifest
from qwbatch.manifest.vector import hex_keys, key_rows, shard_lines
from qwbatch.plan import Plan, plan_run, read_shard
from qwbatch.plan.planner import stream_plan
from qwbatch.plan.shards import encode_line
from qwbatch.runs import records
from qwbatch.storage.stores import LocalStore

TABLE = ModelTable.load()
DEFAULT = "qwen-image-2.0"
TAGS = pa.map_(pa.string(), pa.string())

PROMPTS = [
    "a red sneaker on a white background",
    '一只猫坐在窗台上, "quoted" and back\\slash',
    "emoji 🎨 and accents: café, naïve",
    "tab\tinside and a newline\ninside",  # controls: the row checker's path
    "  padded prompt  ",  # edge whitespace: the row checker strips it
    "ends with a non-breaking space\u00a0",
]
NEGATIVES = [None, "blurry", 'no "text"', "", "水印"]
SIZES = [None, "1024*1024", "1664x928", " 928 X 1664 ", "1328*1328"]
SEEDS = [None, 0, 7, SEED_MAX, None, 123456789]
MODELS = [None, "qwen-image-2.0-pro", "qwen-image-plus", None]
TAG_ROWS = [
    None,
    [],
    [("campaign", "spring")],
    [("a", "1"), ("b", "")],
    [("sku", 'x"y')],  # a quote in a tag value: the row checker's path
    [("z", "last"), ("a", "first")],  # unsorted keys: the row checker sorts them
]


def varied_manifest(path: Path, rows: int) -> Path:
    """Rows cycling through the variants above (every id distinct)."""
    columns = {
        "id": [f"row-{i}" for i in range(rows)],
        "prompt": [PROMPTS[i % len(PROMPTS)] + f" #{i // 7}" for i in range(rows)],
        "model": [MODELS[i % len(MODELS)] for i in range(rows)],
        "negative_prompt": [NEGATIVES[i % len(NEGATIVES)] for i in range(rows)],
        "size": [SIZES[i % len(SIZES)] for i in range(rows)],
        "n": pa.array([(None, 1, 2)[i % 3] for i in range(rows)], pa.int32()),
        "seed": pa.array([SEEDS[i % len(SEEDS)] for i in range(rows)], pa.int64()),
        "prompt_extend": [(None, True, False)[i % 3] for i in range(rows)],
        "watermark": [(None, False, True, False)[i % 4] for i in range(rows)],
        "tags": pa.array([TAG_ROWS[i % len(TAG_ROWS)] for i in range(rows)], TAGS),
        "priority": pa.array([(None, 3)[i % 2] for i in range(rows)], pa.int32()),
    }
    pq.write_table(pa.table(columns), path)
    return path


def test_column_wise_keys_and_lines_equal_the_row_checkers(tmp_path: Path) -> None:
    manifest = varied_manifest(tmp_path / "m.parquet", 600)
    legacy = {
        r.row_number: r
        for batch in read_manifest(manifest, table=TABLE, default_model=DEFAULT, batch_size=128)
        for r in batch.requests
    }
    fast_rows = slow_rows = 0
    reader = read_manifest(manifest, table=TABLE, default_model=DEFAULT, batch_size=128)
    for block in reader.blocks():
        digests, seeds = key_rows(block.rows)
        keys = hex_keys(digests).to_pylist()
        assert keys == [d.hex() for d in digests]
        numbers = block.fast["row_number"].to_pylist()
        every = pa.array(range(len(keys)), pa.int64())
        lines = (
            shard_lines(block.rows, every, hex_keys(digests), pa.array(seeds)).to_pylist()
            if block.rows
            else []
        )
        for number, key, seed, line in zip(numbers, keys, seeds, lines, strict=True):
            request = legacy.pop(number)
            assert (key, seed) == (request.request_key, request.seed)
            unseeded = request.row_number % len(SEEDS) in (0, 4)
            fields = RequestFields.of(request)
            assert (key, seed) == key_and_seed(
                dataclasses.replace(fields, seed=None) if unseeded else fields
            )
            assert line == encode_line(PlanItem(request)) + "\n"
            assert json.loads(line)["request"]["row_number"] == number
        for request in block.requests:
            assert legacy.pop(request.row_number) == request
        fast_rows += len(keys)
        slow_rows += len(block.requests)
    assert legacy == {}  # every accepted row came out of one path or the other
    assert fast_rows > 150
    assert slow_rows > 150


def _settings(tmp_path: Path) -> Settings:
    return Settings(default_model=DEFAULT, shard_size=3, api_key="sk-test")


def _catalog_rows(store: LocalStore, uri: str | None) -> list[dict[str, object]]:
    """The rows of the plan's catalog part, without their timestamps."""
    assert uri == store.uri("catalog/part-r1-plan.parquet")
    table = pq.read_table(io.BytesIO(store.get("catalog/part-r1-plan.parquet")))
    return [
        {k: v for k, v in row.items() if k not in ("started_at", "finished_at")}
        for row in table.to_pylist()
    ]


@pytest.mark.parametrize("all_images", [True, False])
def test_streaming_plan_equals_the_in_memory_plan(tmp_path: Path, all_images: bool) -> None:
    manifest = tmp_path / "m.parquet"
    base = varied_manifest(tmp_path / "base.parquet", 90)
    table = pq.read_table(base)
    # Rows repeating earlier requests under new ids: in the same shard and in later ones.
    repeats = table.take([0, 1, 2, 40, 5, 0]).set_column(
        0, "id", pa.array([f"again-{i}" for i in range(6)])
    )
    pq.write_table(pa.concat_tables([table, repeats]), manifest)
    settings = _settings(tmp_path)
    plans = {}
    for name in ("stream", "memory"):
        store = LocalStore(tmp_path / name)
        earlier_catalog(store, manifest, every=4, all_images=all_images)
        budget = BudgetPolicy(Decimal(10**9), "refuse") if name == "memory" else None
        plan = plan_run(manifest, store, settings=settings, table=TABLE, run_id="r1", budget=budget)
        shards = [[(i.request, i.aliases) for i in read_shard(store, k)] for k in plan.shard_keys]
        rejects = pq.read_table(io.BytesIO(store.get("rejects/rejects-r1.parquet"))).to_pylist()
        plans[name] = (plan, shards, _catalog_rows(store, plan.dedup_part_uri), rejects)
    (stream, s_shards, s_dedup, s_rejects) = plans["stream"]
    (memory, m_shards, m_dedup, m_rejects) = plans["memory"]
    assert s_shards == m_shards
    assert any(aliases for shard in s_shards for _, aliases in shard)
    assert s_dedup == m_dedup
    assert len(s_dedup) > 20
    assert s_rejects == m_rejects
    assert len(s_rejects) > 0
    for field in (
        "rows_read",
        "rejected",
        "deduplicated",
        "folded",
        "requests",
        "images",
        "shard_keys",
        "images_by_model",
        "estimate",
        "shards",
    ):
        assert getattr(stream, field) == getattr(memory, field), field
    assert stream.folded > 0
    # The streaming estimate's tag lines are Arrow columns (costs.TagLines): the same lines,
    # the same largest ones (ties by label), and a saved plan keeps them.
    assert stream.estimate is not None
    assert memory.estimate is not None
    assert isinstance(stream.estimate.by_tag, TagLines)
    for count in (3, 10_000):
        assert stream.estimate.largest_tags(count) == memory.estimate.largest_tags(count)
    store = LocalStore(tmp_path / "stream")
    records.save_plan(store, stream, "fingerprint")
    saved = records.load_plan(store, "r1")
    assert saved is not None
    assert saved[0].estimate == memory.estimate


def test_a_strict_plan_refused_late_leaves_no_shard_behind(tmp_path: Path) -> None:
    manifest = tmp_path / "m.parquet"
    ids = [f"r{i}" for i in range(40)]
    prompts = [f"prompt {i}" for i in range(40)]
    prompts[37] = ""  # a reject in the last batch, after shards were written
    pq.write_table(pa.table({"id": ids, "prompt": prompts}), manifest)
    store = LocalStore(tmp_path / "out")
    with pytest.raises(ManifestError, match="strict"):
        stream_plan(
            manifest,
            store,
            settings=_settings(tmp_path),
            table=TABLE,
            run_id="r1",
            strict=True,
            batch_size=8,
        )
    assert [k for k in store.list("runs/") if "shard" in k] == []


def test_run_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path) -> None:
    manifest = varied_manifest(tmp_path / "m.parquet", 60)
    out = tmp_path / "out"
    store = LocalStore(out)
    earlier_catalog(store, manifest, every=4, all_images=True)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    result = CliRunner().invoke(
        app, ["run", str(manifest), "--out", str(out), "--dry-run", "--shard-size", "4"]
    )
    assert result.exit_code == 0, result.output
    plan = plan_run(
        manifest,
        store,
        settings=Settings(default_model=DEFAULT, shard_size=4),
        table=TABLE,
        run_id="x",
        dry_run=True,
    )
    assert plan.deduplicated > 0
    assert plan.rejected > 0
    assert plan.shards > 1
    text = " ".join(result.output.split())
    assert (
        f"rows read 60, rejected {plan.rejected}, deduplicated {plan.deduplicated} "
        f"(already in the catalog), folded {plan.folded}"
    ) in text
    assert (
        f"to render: {plan.requests} requests, {plan.images} images in {plan.shards} shards"
    ) in text
    assert "estimated cost" in text
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


@pytest.mark.parametrize("absent", [False, True])
def test_dedup_rows_join_each_request_to_its_stored_output(tmp_path: Path, absent: bool) -> None:
    """The one-image-a-key path: every request found (slices of the requests, no take), or
    one whose key has no stored output (dropped; the others keep their order)."""
    manifest = varied_manifest(tmp_path / "m.parquet", 40)
    store = LocalStore(tmp_path / "out")
    earlier_catalog(store, manifest, every=4, all_images=False)
    stored = pq.read_table(io.BytesIO(store.get(catalog.part_keys(store)[0])))
    keys = stored["request_key"].to_pylist()[:5]
    asked_keys = [*keys[:2], "0" * 64, *keys[2:]] if absent else keys
    count = len(asked_keys)
    requests = pa.table(
        {
            "order": range(count),
            "row_id": [f"row-{i}" for i in range(count)],
            "request_key": asked_keys,
            "mode": ["generate"] * count,
            "model": [DEFAULT] * count,
            "prompt": [f"prompt {i}" for i in range(count)],
            "negative_prompt": [None] * count,
            "size": [None] * count,
            "n": [1] * count,
            "seed": range(count),
            **{
                name: [[]] * count
                for name in ("tags", "input_images", "input_sha256", "input_notes")
            },
            "target_size": [None] * count,
        },
        schema=catalog_keys.REQUEST_SCHEMA,
    )
    kept = catalog_keys.DedupRows()
    for block in (requests.slice(0, 3), requests.slice(3)):  # as the plan hands them: by block
        kept.add(block)
    slices = list(catalog_keys.dedup_rows(store, kept, run_id="r2", currency="CNY", slice_rows=2))
    rows = pa.concat_tables(slices).to_pylist()
    expected_ids = [f"row-{i}" for i, key in enumerate(asked_keys) if key in keys]
    assert [r["row_id"] for r in rows] == expected_ids
    assert [r["request_key"] for r in rows] == keys
    assert [r["output_uri"] for r in rows] == [f"file:///x/{k}-0" for k in keys]
    assert [r["prompt"] for r in rows] == [f"prompt {int(i[4:])}" for i in expected_ids]
    assert {r["status"] for r in rows} == {"deduplicated"}
    assert {r["cost"] for r in rows} == {0.0}


def _streamed_and_in_memory(
    manifest: Path, tmp_path: Path, *, catalog_every: int | None
) -> dict[str, tuple[Plan, list[list[tuple[object, object]]], list[dict[str, object]]]]:
    """``manifest`` planned streaming (blocks of 10 rows) and in memory, each into its own
    store holding a catalog of every ``catalog_every``-th request (None: no catalog): each
    plan, its shards' (request, aliases), and its catalog rows of deduplicated requests. The
    streaming dry run counts as its run."""
    settings = Settings(default_model=DEFAULT, shard_size=7)
    plans = {}
    for name in ("stream", "memory"):
        store = LocalStore(tmp_path / name)
        if catalog_every is not None:
            earlier_catalog(store, manifest, every=catalog_every, all_images=True)
        if name == "stream":
            plan = stream_plan(
                manifest, store, settings=settings, table=TABLE, run_id="r1", batch_size=10
            )
            dry = stream_plan(
                manifest, store, settings=settings, table=TABLE, run_id="r1", batch_size=10,
                dry_run=True,
            )  # fmt: skip
            assert (dry.requests, dry.deduplicated, dry.shards) == (
                plan.requests,
                plan.deduplicated,
                len(plan.shard_keys),
            )
        else:
            budget = BudgetPolicy(Decimal(10**9), "refuse")
            plan = plan_run(
                manifest, store, settings=settings, table=TABLE, run_id="r1", budget=budget
            )
        shards = [[(i.request, i.aliases) for i in read_shard(store, k)] for k in plan.shard_keys]
        dedup = _catalog_rows(store, plan.dedup_part_uri) if catalog_every is not None else []
        plans[name] = (plan, shards, dedup)
    return plans


@pytest.mark.parametrize("with_catalog", [False, True])
def test_blocks_of_new_rows_place_requests_as_row_by_row(
    tmp_path: Path, with_catalog: bool
) -> None:
    # Clean rows: whole blocks of requests new to the catalog (every fourth row in it, or no
    # catalog) are placed in bulk; a block repeating an earlier block's request, or its
    # own, goes row by row. Both as in memory.
    rows = 60
    prompts = [f"a lamp, variant {i}" for i in range(rows)]
    prompts[35] = prompts[3]  # repeats a request of an earlier block
    prompts[52] = prompts[51]  # repeats one of its own block
    manifest = tmp_path / "m.parquet"
    pq.write_table(
        pa.table({"id": [f"r{i}" for i in range(rows)], "prompt": prompts}),
        manifest,
        row_group_size=16,
    )
    plans = _streamed_and_in_memory(manifest, tmp_path, catalog_every=4 if with_catalog else None)
    (stream, s_shards, s_dedup), (memory, m_shards, m_dedup) = plans["stream"], plans["memory"]
    assert s_shards == m_shards
    assert s_dedup == m_dedup
    # With the catalog, r52's request (r51's) is in it: both rows are deduplicated.
    aliases = ["r35"] if with_catalog else ["r35", "r52"]
    assert [a.row_id for shard in s_shards for _, found in shard for a in found] == aliases
    in_catalog = len(range(0, rows, 4)) + 1 if with_catalog else 0
    assert stream.deduplicated == memory.deduplicated == in_catalog
    assert stream.requests == memory.requests == rows - len(aliases) - in_catalog
    assert stream.shard_keys == memory.shard_keys


@pytest.mark.parametrize("with_catalog", [False, True])
def test_blocks_with_row_checker_rows_place_requests_as_in_memory(
    tmp_path: Path, with_catalog: bool
) -> None:
    # Blocks mixing column-wise rows and the row checker's (controls, padding, unsorted
    # tags), no request repeated: placed in bulk, in manifest order, as the in-memory plan.
    manifest = varied_manifest(tmp_path / "m.parquet", 60)
    plans = _streamed_and_in_memory(manifest, tmp_path, catalog_every=3 if with_catalog else None)
    (stream, s_shards, s_dedup), (memory, m_shards, m_dedup) = plans["stream"], plans["memory"]
    assert s_shards == m_shards
    assert s_dedup == m_dedup
    assert stream.deduplicated == memory.deduplicated
    assert stream.folded == memory.folded == 0
    assert (stream.deduplicated > 10) == with_catalog
    variants = {request.row_number % 6 for shard in s_shards for request, _ in shard}
    assert {3, 4} <= variants  # rows of the row checker among them (PROMPTS[3] and [4])
