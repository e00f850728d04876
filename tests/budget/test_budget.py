"""The running budget guard: the engine against the simulator over HTTP, spending through it.

The simulator's ledger is the provider's bill; every test checks the bill, not our counters.
"""

from __future__ import annotations

import threading
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import support
from render_helpers import render

from qwbatch.budget import BUDGETS, BudgetSpec, LocalBudget
from qwbatch.core.costs import PriceTable
from qwbatch.core.errors import BudgetExceededError
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.core.types import CatalogRecord, PlanItem, RenderRequest
from qwbatch.plan.planner import plan_run
from qwbatch.render.engine import ShardResult
from qwbatch.runs import runner
from qwbatch.storage.stores import open_store

TABLE = ModelTable.load()
PRICES = PriceTable.load(Settings(), TABLE)


def make_request(
    prompt: str = "a red bicycle",
    *,
    model: str = "qwen-image-2.0",
    n: int = 1,
    size: str | None = "512*512",
) -> RenderRequest:
    return support.make_request(prompt, prompt, model=model, n=n, size=size)


def billed(sim) -> Decimal:
    """The simulator's bill in USD: its billed images per model at the table's prices."""
    return sum(
        (PRICES.cost(model, images) for model, images in sim.ledger()["by_model"].items()),
        Decimal(0),
    )


@pytest.fixture
def settings(sim) -> Settings:
    sim.configure(fast=True)
    return support.engine_settings(sim, budget_backend="local")


def run(
    requests: list[RenderRequest], settings: Settings, out: Path, guard: LocalBudget
) -> list[CatalogRecord]:
    items = [PlanItem(r) for r in requests]
    return render(items, settings, out, run_id="budget-test", write_part=False, budget=guard)


def test_partial_failures_free_the_money_of_images_not_billed(sim, settings, tmp_path) -> None:
    sim.configure(partial_failure_rate=0.5, seed=11)
    guard = LocalBudget(Decimal("0.21"))  # exactly six images of qwen-image-2.0
    run([make_request(n=6)], settings, tmp_path, guard)
    made = sim.ledger()["billed_images"]
    assert 0 < made < 6
    assert guard.used == billed(sim) == made * Decimal("0.035")
    assert guard.held == 0

    # What the provider did not bill is free again: exactly that many more images fit …
    sim.configure(partial_failure_rate=0.0)
    records = run([make_request("the rest", n=6 - made)], settings, tmp_path, guard)
    assert {r.status for r in records} == {"succeeded"}
    assert billed(sim) == guard.used == Decimal("0.21")
    # … and not one image more: the next request is never sent.
    records = run([make_request("one too many")], settings, tmp_path, guard)
    assert [(r.status, r.error_code, r.attempts) for r in records] == [
        ("skipped_budget", "BudgetExceeded", 0)
    ]
    assert billed(sim) == Decimal("0.21")


def test_a_lost_answer_keeps_its_money_and_its_retry_is_not_sent(sim, settings, tmp_path) -> None:
    # Every answer is lost after billing. Without a budget the engine retries once, and the
    # provider bills twice (test_engine); with room for one image, the retry is refused.
    sim.configure(drop_connection_rate=1.0)
    guard = LocalBudget(Decimal("0.035"))
    records = run([make_request()], settings, tmp_path, guard)
    assert [r.status for r in records] == ["ambiguous"]
    assert records[0].attempts == 1
    assert records[0].possible_cost == pytest.approx(0.035)
    assert "retry" in (records[0].error_message or "")
    assert sim.ledger()["billed_images"] == 1
    assert guard.used == billed(sim) == Decimal("0.035")


def test_async_tasks_settle_on_usage_and_failed_tasks_cost_nothing(sim, settings, tmp_path) -> None:
    plus = {"model": "qwen-image-plus", "size": "1328*1328"}
    guard = LocalBudget(Decimal("0.03"))  # one qwen-image-plus image
    sim.configure(task_failure_rate=1.0)
    records = run([make_request("fails", **plus)], settings, tmp_path, guard)
    assert [r.status for r in records] == ["failed"]
    assert (guard.used, guard.held) == (0, 0)

    sim.configure(task_failure_rate=0.0)
    records = run([make_request("works", **plus)], settings, tmp_path, guard)
    assert [r.status for r in records] == ["succeeded"]
    assert records[0].provider_task_id
    assert guard.used == billed(sim) == Decimal("0.03")
    assert guard.held == 0


def test_concurrent_shards_in_threads_never_pass_the_budget(sim, settings, tmp_path) -> None:
    """Four shards at once (as the flow's thread pool runs them) share one budget."""
    sim.configure(partial_failure_rate=0.3, drop_connection_rate=0.1, seed=5)
    manifest = tmp_path / "m.parquet"
    pq.write_table(
        pa.table(
            {
                "id": [f"row-{i}" for i in range(40)],
                "prompt": [f"picture {i}" for i in range(40)],
                "size": ["512*512"] * 40,
                "n": [1 + i % 3 for i in range(40)],
            }
        ),
        manifest,
    )
    out = tmp_path / "out"
    store = open_store(str(out), settings)
    plan = plan_run(
        manifest, store, settings=settings, table=TABLE, run_id="threads", shard_size=10
    )
    assert plan.estimate is not None
    assert len(plan.shard_keys) == 4
    limit = Decimal("1.00")  # the plan costs 80 images x 0.035 = 2.80
    assert plan.estimate.total > 2 * limit
    spec = BudgetSpec(run_id="threads", limit=str(limit), currency="USD", backend="local")
    guard = BUDGETS.open(spec.run_id, limit)
    results: list[ShardResult] = []

    def shard(key: str) -> None:
        results.append(
            runner.render_shard(
                key,
                out=str(out),
                run_id="threads",
                manifest_dir=str(tmp_path),
                settings=settings,
                budget=spec,
            )
        )

    threads = [threading.Thread(target=shard, args=(key,)) for key in plan.shard_keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    BUDGETS.close(spec.run_id)

    assert len(results) == 4
    assert billed(sim) <= limit
    assert guard.held == 0
    assert billed(sim) <= guard.used <= limit  # kept holds of lost answers count in full
    statuses = sum((r.statuses for r in results), start=results[0].statuses.__class__())
    assert statuses["skipped_budget"] > 0
    assert statuses["succeeded"] > 0


def test_a_shard_in_another_process_refuses_to_spend(sim, settings, tmp_path) -> None:
    spec = BudgetSpec(run_id="nowhere", limit="1", currency="USD", backend="local")
    with pytest.raises(BudgetExceededError, match="QWBATCH_BUDGET_BACKEND=prefect"):
        runner.render_shard(
            "runs/nowhere/shards/shard-00000.jsonl.gz",
            out=str(tmp_path),
            run_id="nowhere",
            manifest_dir=str(tmp_path),
            settings=settings,
            budget=spec,
        )
    assert sim.ledger()["billed_images"] == 0
