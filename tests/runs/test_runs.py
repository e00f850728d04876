"""Runs across invocations: automatic and explicit resume, incremental reruns, run records."""

from __future__ import annotations

import asyncio
import io
import time
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from local_run import render_all
from support import engine_settings

from qwbatch.budget.policy import BudgetPolicy
from qwbatch.catalog.table import read_catalog
from qwbatch.core.costs import Estimate, PriceTable, money
from qwbatch.core.errors import ConfigError
from qwbatch.core.model_table import ModelTable
from qwbatch.core.stop import StopSignal
from qwbatch.runs import progress, runner
from qwbatch.runs import records as runs
from qwbatch.storage.layout import journal_prefix, shard_result_key
from qwbatch.storage.stores import LocalStore

TABLE = ModelTable.load()
PRICES = {"qwen-image-2.0": 0.035, "qwen-image-plus": 0.03}


def write_manifest(path: Path, prompts: dict[str, str]) -> Path:
    ids = list(prompts)
    pq.write_table(
        pa.table(
            {
                "id": ids,
                "prompt": [prompts[i] for i in ids],
                "model": [
                    "qwen-image-plus" if n % 2 else "qwen-image-2.0" for n in range(len(ids))
                ],
                "size": ["1328*1328" if n % 2 else "512*512" for n in range(len(ids))],
            }
        ),
        path,
    )
    return path


@pytest.fixture
def settings(sim):
    sim.configure(fast=True)
    return engine_settings(sim, shard_size=4, backoff_max_s=0.05)


def billed_prompts(sim) -> list[str]:
    return [entry["prompt_sha256"] for entry in sim.ledger()["entries"]]


def test_a_rerun_with_changed_rows_requests_only_those(sim, settings, tmp_path) -> None:
    prompts = {f"sku-{i}": f"product shot {i}, studio light" for i in range(12)}
    manifest = write_manifest(tmp_path / "m.parquet", prompts)
    out = str(tmp_path / "out")
    first = render_all(manifest, out, settings)
    assert (first.requests, first.statuses) == (12, {"succeeded": 12})
    outputs = {
        r["row_id"]: r["output_uri"]
        for r in read_catalog(LocalStore(out)).to_pylist()
        if r["status"] == "succeeded"
    }

    changed = {"sku-1": "product shot 1, golden hour", "sku-6": "product shot 6, on marble"}
    added = {"sku-12": "product shot 12, studio light", "sku-13": "a new product"}
    write_manifest(manifest, {**prompts, **changed, **added})
    before = len(billed_prompts(sim))
    second = render_all(manifest, out, settings)

    assert second.run_id != first.run_id  # the first run had finished: nothing to resume
    assert second.requests == len(changed) + len(added)
    assert second.deduplicated == 12 - len(changed)
    assert len(billed_prompts(sim)) - before == len(changed) + len(added)
    rows = [r for r in read_catalog(LocalStore(out)).to_pylist() if r["run_id"] == second.run_id]
    by_row = {r["row_id"]: r for r in rows}
    assert len(rows) == 14
    for row_id, uri in outputs.items():
        row = by_row[row_id]
        if row_id in changed:
            assert (row["status"], row["output_uri"] != uri) == ("succeeded", True)
        else:
            assert (row["status"], row["output_uri"], row["cost"]) == ("deduplicated", uri, 0)
    assert {by_row[i]["status"] for i in added} == {"succeeded"}


def test_a_stopped_run_is_resumed_automatically_and_pays_nothing_twice(
    sim, settings, tmp_path
) -> None:
    sim.configure(latency_s=0.05)
    prompts = {f"r{i}": f"a lantern number {i}" for i in range(12)}
    manifest = write_manifest(tmp_path / "m.parquet", prompts)
    out = str(tmp_path / "out")
    store = LocalStore(out)

    # First attempt: shard 0 finishes, then the user presses Ctrl-C.
    began = time.monotonic()
    stop = StopSignal()
    prepared = runner.prepare(str(manifest), out, settings=settings)
    run_id = prepared.plan.run_id
    shards = []
    for index, key in enumerate(prepared.plan.shard_keys):
        if index == 1:
            stop.set("SIGINT", 2)
        shards.append(
            asyncio.run(
                runner.render_shard_async(
                    key,
                    out=out,
                    run_id=run_id,
                    manifest_dir=str(tmp_path),
                    settings=settings,
                    stop=stop,
                )
            )
        )
    stopped = runner.finish(prepared, shards, out=out, settings=settings, began=began, stop=stop)
    assert (stopped.left, stopped.stopped_by) == (8, "SIGINT")
    assert f"--resume {run_id}" in stopped.left_line()
    assert store.exists(shard_result_key(prepared.plan.shard_keys[0]))
    assert list(store.list(journal_prefix(run_id, "shard-00000"))) == []
    assert not runs.is_finished(store, run_id)

    # The resumed attempt's progress counts the shard the first attempt finished, too.
    with progress.watching(run_id, progress.ProgressTracker()) as tracker:
        resumed = render_all(manifest, out, settings)
    assert tracker.snapshot().done_images == tracker.snapshot().total_images == 12
    assert (resumed.run_id, resumed.resumed, resumed.left) == (run_id, True, 0)
    assert resumed.statuses == {"succeeded": 12}
    prompts_billed = billed_prompts(sim)
    assert len(prompts_billed) == len(set(prompts_billed)) == 12
    rows = read_catalog(store).to_pylist()
    assert sorted(r["row_id"] for r in rows) == sorted(prompts)
    assert runs.is_finished(store, run_id)
    assert list(store.list(journal_prefix(run_id))) == []


def test_resume_refuses_what_it_cannot_continue(sim, settings, tmp_path) -> None:
    manifest = write_manifest(tmp_path / "m.parquet", {"a": "a cat"})
    out = str(tmp_path / "out")
    with pytest.raises(ConfigError, match="no run nope"):
        runner.prepare(str(manifest), out, settings=settings, resume="nope")
    first = render_all(manifest, out, settings, run_id="nightly")
    assert first.run_id == "nightly"
    other = write_manifest(tmp_path / "other.parquet", {"a": "a dog"})
    with pytest.raises(ConfigError, match="rendered another manifest"):
        runner.prepare(str(other), out, settings=settings, run_id="nightly")


def test_a_run_cut_short_while_planning_is_planned_again_under_its_id(
    sim, settings, tmp_path
) -> None:
    manifest = write_manifest(tmp_path / "m.parquet", {"a": "a cat", "b": "a dog"})
    out = str(tmp_path / "out")
    store = LocalStore(out)
    fingerprint = runs.manifest_fingerprint(manifest, default_model="qwen-image-2.0", strict=False)
    runs.start_run(store, "cut-short", fingerprint)  # then the process died
    summary = render_all(manifest, out, settings)
    assert (summary.run_id, summary.resumed, summary.statuses) == (
        "cut-short",
        True,
        {"succeeded": 2},
    )
    again = render_all(manifest, out, settings, auto_resume=False)
    assert again.run_id != "cut-short"
    assert again.deduplicated == 2


def test_a_resumed_run_keeps_its_budget_less_what_it_spent(sim, settings, tmp_path) -> None:
    settings = settings.model_copy(update={"budget_backend": "local"})
    prompts = {f"b{i}": f"a budget poster {i}" for i in range(12)}
    manifest = write_manifest(tmp_path / "m.parquet", prompts)
    out = str(tmp_path / "out")
    store = LocalStore(out)
    policy = BudgetPolicy(money(0.30), "trim")  # 6 × 0.035 + 6 × 0.03 = 0.39: trimmed

    def render(prepared, keys):
        spec = runner.open_budget(prepared.plan, settings)
        try:
            return [
                asyncio.run(
                    runner.render_shard_async(
                        key,
                        out=out,
                        run_id=prepared.plan.run_id,
                        manifest_dir=str(tmp_path),
                        settings=settings,
                        budget=spec,
                        stop=StopSignal(),
                    )
                )
                for key in keys
            ], spec
        finally:
            if spec is not None:
                runner.close_budget(spec)

    first = runner.prepare(str(manifest), out, settings=settings, budget=policy)
    assert first.plan.skipped_budget > 0
    (shard,), _ = render(first, first.plan.shard_keys[:1])  # then the process died

    again = runner.prepare(str(manifest), out, settings=settings, budget=policy)
    assert (again.resumed, again.plan.run_id) == (True, first.plan.run_id)
    # The saved plan comes back whole: money as Decimal, the estimate and the budget.
    assert isinstance(again.plan.estimate, Estimate)
    assert again.plan.estimate.total == first.plan.estimate.total
    assert again.plan.budget is not None
    assert again.plan.budget.spent == money(shard.cost)
    _, spec = render(again, again.plan.shard_keys)
    assert spec is not None
    assert Decimal(spec.limit) == policy.amount - money(shard.cost)
    billed = sum(PRICES[e["model"]] * e["images"] for e in sim.ledger()["entries"])
    assert billed <= float(policy.amount)
    assert len({e["prompt_sha256"] for e in sim.ledger()["entries"]}) == len(
        sim.ledger()["entries"]
    )
    assert runs.spent_so_far(store, first.plan.run_id, PriceTable.load(settings, TABLE)) > 0


def test_fingerprint_of_an_s3_manifest_follows_its_objects(s3_bucket, s3_settings, s3_client):
    """An s3:// manifest is fingerprinted from the store's etags: stable, and new on change."""

    def put(prompts: list[str]) -> None:
        sink = io.BytesIO()
        pq.write_table(pa.table({"id": ["a", "b"], "prompt": prompts}), sink)
        s3_client.put_object(Bucket=s3_bucket, Key="m/manifest.parquet", Body=sink.getvalue())

    uri = f"s3://{s3_bucket}/m/manifest.parquet"
    put(["a cat", "a dog"])
    first = runs.manifest_fingerprint(
        uri, default_model="qwen-image-2.0", strict=False, settings=s3_settings
    )
    again = runs.manifest_fingerprint(
        uri, default_model="qwen-image-2.0", strict=False, settings=s3_settings
    )
    put(["a cat", "a fox"])
    changed = runs.manifest_fingerprint(
        uri, default_model="qwen-image-2.0", strict=False, settings=s3_settings
    )
    assert first == again
    assert changed != first
