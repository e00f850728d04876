"""A large manifest planned in two processes plans what one process plans: the same requests
in the same shard order, aliases across the cut, catalog rows, rejects, repeated ids and
estimate; a failure on either side fails the plan and leaves no shard behind."""

from __future__ import annotations

import hashlib
import io
import os
import signal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from plan_helpers import earlier_catalog

from qwbatch.core.errors import ManifestError, PlanHelperError
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.manifest import LocalInputResolver
from qwbatch.plan import Plan, read_shard
from qwbatch.plan import split as plan_split
from qwbatch.plan.planner import stream_plan
from qwbatch.storage.stores import LocalStore, ObjectStore, S3Store

TABLE = ModelTable.load()
DEFAULT = "qwen-image-2.0"
TAGS = pa.map_(pa.string(), pa.string())
ROWS = 200
BATCH = 10  # rows a batch: the cut falls on a multiple of it

MODELS = [None, "qwen-image-2.0-pro", "qwen-image-plus"]
SIZES = [None, "1024*1024", "1664x928"]


def _rows() -> list[dict[str, Any]]:
    """Rows with every kind of case on both sides of the cut (around row 100)."""
    rows: list[dict[str, Any]] = []
    for i in range(ROWS):
        prompt = f"a product photo #{i}"
        if i % 7 == 3:
            prompt = f"tab\tinside #{i}"  # a control character: the row checker's path
        if i % 13 == 5:
            prompt = ""  # a reject on either side
        rows.append(
            {
                "id": f"row-{i}",
                "prompt": prompt,
                "model": MODELS[i % 3],
                "size": SIZES[i % 3],
                "n": (None, 1, 2)[i % 3],
                "seed": i if i % 4 else None,
                "tags": [("z", "last"), ("a", str(i))] if i % 11 == 2 else [("sku", str(i))],
                "priority": (None, 3, 1)[i % 3],
            }
        )

    def again(source: int, at: int, priority: int | None) -> None:
        rows[at] = {**rows[source], "id": f"again-{at}", "priority": priority}

    for offset in range(8):  # second side repeating first-side requests: folded across
        again(10 + offset, 150 + offset, 9 if offset % 2 else None)
    again(150, 170, 11)  # a second-side repeat of a request the first side planned
    again(151, 171, None)
    for offset in range(4):  # repeats within each side
        again(20 + offset, 40 + offset, 5)
        again(120 + offset, 180 + offset, 7)
    rows[160] = {**rows[161], "id": "row-4", "prompt": "an id first seen on the other side"}
    rows[190] = {**rows[191], "id": "twice", "prompt": "an id seen twice on one side"}
    rows[195] = {**rows[196], "id": "twice", "prompt": "its second occurrence"}
    return rows


SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("model", pa.string()),
        ("size", pa.string()),
        ("n", pa.int32()),
        ("seed", pa.int64()),
        ("tags", TAGS),
        ("priority", pa.int32()),
    ]
)
EDIT_SCHEMA = SCHEMA.append(pa.field("mode", pa.string())).append(
    pa.field("input_images", pa.list_(pa.string()))
)


def _manifest(path: Path, rows: list[dict[str, Any]] | None = None) -> Path:
    table = pa.Table.from_pylist(rows or _rows(), schema=SCHEMA)
    pq.write_table(table, path, row_group_size=64)  # batches of 10 cross row groups
    return path


def _settings(split_rows: int) -> Settings:
    return Settings(default_model=DEFAULT, shard_size=4, plan_split_rows=split_rows)


def _plan(manifest: Path, store: ObjectStore | None, split_rows: int, **options: Any) -> Plan:
    return stream_plan(
        manifest,
        store,
        settings=_settings(split_rows),
        table=TABLE,
        run_id="r1",
        batch_size=BATCH,
        **options,
    )


def _outcome(store: ObjectStore, plan: Plan) -> dict[str, Any]:
    """Everything the plan wrote, as values: shard items in order, catalog rows, rejects."""
    items = [(i.request, i.aliases) for key in plan.shard_keys for i in read_shard(store, key)]
    rows = []
    for uri in plan.dedup_part_uris:
        key = "catalog/" + uri.rsplit("/catalog/", 1)[1]
        table = pq.read_table(io.BytesIO(store.get(key)))
        rows += [
            {k: v for k, v in row.items() if k not in ("started_at", "finished_at")}
            for row in table.to_pylist()
        ]
    rejects = pq.read_table(io.BytesIO(store.get("rejects/rejects-r1.parquet"))).to_pylist()
    return {"items": items, "catalog": rows, "rejects": rejects}


COUNTS = ("rows_read", "rejected", "deduplicated", "folded", "requests", "images")


@pytest.mark.parametrize("all_images", [True, False])
def test_two_processes_plan_what_one_plans(tmp_path: Path, all_images: bool) -> None:
    manifest = _manifest(tmp_path / "m.parquet")
    cut = plan_split.split_row(manifest, LocalStore(tmp_path), _settings(50), BATCH)
    assert cut is not None
    assert 80 <= cut <= 120  # the cases above sit on both sides of it
    plans, outcomes = {}, {}
    for name, split_rows in (("one", 0), ("two", 50)):
        store = LocalStore(tmp_path / name)
        earlier_catalog(store, manifest, every=5, all_images=all_images)
        plans[name] = _plan(manifest, store, split_rows)
        outcomes[name] = _outcome(store, plans[name])
    one, two = plans["one"], plans["two"]
    assert len(one.dedup_part_uris) == 1
    assert len(two.dedup_part_uris) == 2  # the second process wrote its own part
    assert outcomes["two"] == outcomes["one"]
    for name in (*COUNTS, "images_by_model", "estimate"):
        assert getattr(two, name) == getattr(one, name), name
    # Shards keep manifest order; the first part's last shard may be short, the second part's
    # numbers start past the most shards the first part could write.
    assert one.shards <= two.shards == len(two.shard_keys) <= one.shards + 2
    assert two.shard_keys[-1] >= f"runs/r1/shards/shard-{-(-cut // 4):05d}"
    # The cases happened: aliases across the cut, repeated ids, rejects on both sides.
    aliases = {a.row_id for _, found in outcomes["one"]["items"] for a in found}
    assert {"again-150", "again-170", "again-180"} <= aliases
    reasons = {(r["row_number"], r["reason"]) for r in outcomes["one"]["rejects"]}
    assert (160, "duplicate id (first seen at row 4)") in reasons
    assert (195, "duplicate id (first seen at row 190)") in reasons
    assert {r for r, _ in reasons if r < cut}
    assert {r for r, _ in reasons if r > cut}
    assert one.deduplicated > 20


def test_a_dry_run_in_two_processes_counts_and_prices_as_one(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "m.parquet")
    store = LocalStore(tmp_path / "out")
    earlier_catalog(store, manifest, every=5, all_images=True)
    before = sorted(store.list(""))
    one = _plan(manifest, store, 0, dry_run=True)
    two = _plan(manifest, store, 50, dry_run=True)
    for name in (*COUNTS, "images_by_model", "estimate"):
        assert getattr(two, name) == getattr(one, name), name
    assert one.shards <= two.shards <= one.shards + 2
    assert sorted(store.list("")) == before  # nothing written


def _no_plan_output(store: ObjectStore) -> bool:
    return not [k for k in store.list("") if "/shards/" in k or "-plan" in k]


@pytest.mark.parametrize("bad_row", [30, 170])
def test_a_strict_refusal_on_either_side_is_one_processs_and_leaves_nothing(
    tmp_path: Path, bad_row: int
) -> None:
    """The bad row is in the first process's part (30) or the second's (170): the message
    is the one a single process gives, and neither process's shards remain."""
    rows = [
        {**row, "id": f"id-{at}", "prompt": row["prompt"] or f"filled {at}", "n": 1}
        for at, row in enumerate(_rows())
    ]  # no reject but the one below
    rows[bad_row]["prompt"] = ""
    manifest = _manifest(tmp_path / "m.parquet", rows)
    messages = []
    for name, split_rows in (("one", 0), ("two", 50)):
        store = LocalStore(tmp_path / name)
        with pytest.raises(ManifestError, match="strict") as raised:
            _plan(manifest, store, split_rows, strict=True)
        messages.append(str(raised.value))
        assert _no_plan_output(store)
    assert messages[0] == messages[1]


class _CountingResolver:
    """Resolves edit inputs under the manifest's folder, counting the URIs it was asked."""

    def __init__(self, folder: Path) -> None:
        self._local = LocalInputResolver(folder)
        self.asked: list[str] = []
        self.prefetched: list[str] = []

    def __call__(self, uri: str) -> str:
        self.asked.append(uri)
        return self._local(uri)

    def prefetch(self, uris: Any) -> None:
        self.prefetched.extend(uris)


def _edit_rows(folder: Path) -> list[dict[str, Any]]:
    rows = _rows()
    for at in (30, 140, 141, 142):
        image = folder / f"input-{at}.png"
        image.write_bytes(hashlib.sha256(str(at).encode()).digest())
        rows[at] = {**rows[at], "mode": "edit", "model": "qwen-image-edit", "size": None, "n": 1}
        rows[at]["input_images"] = [image.name]
    rows[143] = {**rows[142], "id": "missing-input", "input_images": ["nowhere.png"]}
    rows[144] = {**rows[140], "id": "same-edit-again"}  # folds onto row 140's request
    for row in rows:
        row.setdefault("mode", None)
        row.setdefault("input_images", None)
    return rows


def _edit_manifest(path: Path) -> Path:
    table = pa.Table.from_pylist(_edit_rows(path.parent), schema=EDIT_SCHEMA)
    pq.write_table(table, path, row_group_size=64)
    return path


def test_edit_inputs_of_the_second_part_are_resolved_by_the_first_processs_resolver(
    tmp_path: Path,
) -> None:
    manifest = _edit_manifest(tmp_path / "m.parquet")
    outcomes, resolvers = {}, {}
    for name, split_rows in (("one", 0), ("two", 50)):
        store = LocalStore(tmp_path / name)
        resolvers[name] = _CountingResolver(tmp_path)
        plan = _plan(manifest, store, split_rows, resolve_input=resolvers[name])
        outcomes[name] = _outcome(store, plan)
    assert outcomes["two"] == outcomes["one"]
    edits = [r for r, _ in outcomes["one"]["items"] if r.mode == "edit"]
    assert len(edits) == 4
    assert all(r.input_sha256 for r in edits)
    missing = [r for r in outcomes["two"]["rejects"] if r["id"] == "missing-input"]
    assert missing[0]["reason"].startswith("input image not found")
    assert any(
        a.row_id == "same-edit-again" for _, found in outcomes["two"]["items"] for a in found
    )
    # The second part's inputs were asked of this process's resolver, as in one process.
    assert sorted(set(resolvers["two"].asked)) == sorted(set(resolvers["one"].asked))
    assert "nowhere.png" in resolvers["two"].asked


class _KillsTheSecondProcess(_CountingResolver):
    """A resolver that, asked for an input of the second part, kills the process asking."""

    def __call__(self, uri: str) -> str:
        if uri == "input-140.png":
            for pid in _children():
                os.kill(pid, signal.SIGKILL)
        return super().__call__(uri)


def _children() -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == os.getpid() and b"qwbatch.plan.second_process" in cmdline:
                found.append(int(entry))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the process in /proc")
def test_a_second_process_that_dies_fails_the_plan_and_its_shards_are_deleted(
    tmp_path: Path,
) -> None:
    manifest = _edit_manifest(tmp_path / "m.parquet")
    store = LocalStore(tmp_path / "out")
    with pytest.raises(PlanHelperError, match="second process ended"):
        _plan(manifest, store, 50, resolve_input=_KillsTheSecondProcess(tmp_path))
    assert _no_plan_output(store)
    assert _children() == []


class _Unreachable(_CountingResolver):
    """A resolver failing in a way that ends a read (not a refused input)."""

    def __call__(self, uri: str) -> str:
        if uri == "input-141.png":
            raise RuntimeError("the input store is unreachable")
        return super().__call__(uri)


def test_an_error_in_the_second_process_fails_the_plan_with_it(tmp_path: Path) -> None:
    manifest = _edit_manifest(tmp_path / "m.parquet")
    store = LocalStore(tmp_path / "out")
    with pytest.raises(RuntimeError, match="unreachable") as raised:
        _plan(manifest, store, 50, resolve_input=_Unreachable(tmp_path))
    assert any("second process" in note for note in getattr(raised.value, "__notes__", []))
    assert _no_plan_output(store)


def test_a_split_plan_into_s3_equals_one_process(
    tmp_path: Path, s3_client: Any, s3_bucket: str
) -> None:
    """The second process opens the same bucket (a new client aimed at the same endpoint)."""
    manifest = _manifest(tmp_path / "m.parquet")
    outcomes = {}
    for name, split_rows in (("one", 0), ("two", 50)):
        store = S3Store(s3_client, s3_bucket, name)
        earlier_catalog(store, manifest, every=5, all_images=False)
        plan = _plan(manifest, store, split_rows)
        outcomes[name] = _outcome(store, plan)
        assert len(plan.dedup_part_uris) == (2 if split_rows else 1)
    assert outcomes["two"] == outcomes["one"]


def test_small_manifests_and_other_stores_stay_in_one_process(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "m.parquet")
    store = LocalStore(tmp_path)
    assert plan_split.split_row(manifest, store, _settings(50), BATCH) is not None
    assert plan_split.split_row(manifest, store, _settings(ROWS + 1), BATCH) is None
    assert plan_split.split_row(manifest, store, _settings(0), BATCH) is None
    assert plan_split.split_row(manifest, store, _settings(50), ROWS) is None  # one batch

    class Other(LocalStore):
        """A store the second process could not open as this one is."""

    assert plan_split.split_row(manifest, Other(tmp_path), _settings(50), BATCH) is None


def _written_by(writer: str, table: pa.Table, path: Path) -> Path:
    """``table`` as ``writer`` writes Parquet with its defaults (row group sizes, string
    types: polars writes large strings, DuckDB marks columns without nulls required)."""
    if writer == "pyarrow":
        pq.write_table(table, path)
    elif writer == "duckdb":
        import duckdb

        connection = duckdb.connect()
        connection.register("manifest", table)
        # COPY takes no parameter for its target; the path is our own temporary file.
        connection.execute(f"COPY (SELECT * FROM manifest) TO '{path}' (FORMAT parquet)")  # noqa: S608
        connection.close()
    else:
        import polars

        frame = polars.from_arrow(table)
        assert isinstance(frame, polars.DataFrame)
        frame.write_parquet(path)
    return path


def _shard_bytes(store: ObjectStore, plan: Plan) -> list[bytes]:
    return [store.get(key) for key in plan.shard_keys]


@pytest.mark.parametrize("writer", ["pyarrow", "duckdb", "polars"])
def test_every_writers_manifest_plans_the_same_on_every_path(tmp_path: Path, writer: str) -> None:
    # Tags and edit columns present, half the catalog's keys: each writer's file gives the
    # pyarrow file's plan byte for byte in one process, the same plan in two, and a dry run
    # counts the shards a run writes.
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    table = pa.Table.from_pylist(_edit_rows(inputs), schema=EDIT_SCHEMA)
    reference = pq.ParquetFile(_written_by("pyarrow", table, inputs / "reference.parquet"))
    manifest = _written_by(writer, table, inputs / f"{writer}.parquet")
    assert pq.read_table(manifest).to_pylist() == reference.read().to_pylist()
    plans, outcomes, shards = {}, {}, {}
    for name, source, split_rows in (
        ("reference", inputs / "reference.parquet", 0),
        ("one", manifest, 0),
        ("two", manifest, 50),
    ):
        store = LocalStore(tmp_path / name)
        earlier_catalog(store, inputs / "reference.parquet", every=5, all_images=True)
        plans[name] = _plan(source, store, split_rows)
        outcomes[name] = _outcome(store, plans[name])
        shards[name] = _shard_bytes(store, plans[name])
        dry = _plan(source, store, split_rows, dry_run=True)
        assert dry.shards == plans[name].shards, name
        for count in (*COUNTS, "images_by_model", "estimate"):
            assert getattr(dry, count) == getattr(plans[name], count), (name, count)
    assert shards["one"] == shards["reference"]
    assert outcomes["one"] == outcomes["reference"]
    assert outcomes["two"] == outcomes["reference"]
    for count in (*COUNTS, "images_by_model", "estimate"):
        assert getattr(plans["two"], count) == getattr(plans["reference"], count), count
    assert [r for r, _ in outcomes["one"]["items"] if r.mode == "edit"]
    assert plans["one"].deduplicated > 20
