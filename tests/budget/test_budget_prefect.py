"""The budget counted on the Prefect server: its semantics, and two worker processes sharing it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import KEY

from qwbatch.budget import BudgetSpec, open_run_budget
from qwbatch.budget.shared import PrefectBudget, create_counter, delete_counter, read_counter
from qwbatch.core.costs import PriceTable
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.plan.planner import plan_run
from qwbatch.storage.stores import open_store

ROOT = Path(__file__).parents[2]
TABLE = ModelTable.load()
PRICES = PriceTable.load(Settings(), TABLE)

# One worker: wait for the go signal, render one shard through the server's counter, report.
WORKER = """
import json, sys, time
from pathlib import Path
from qwbatch.runs import runner
from qwbatch.budget import BudgetSpec
from qwbatch.core.settings import Settings

shard, out, folder, spec = sys.argv[1], sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4])
settings = Settings()
(folder / f"ready-{shard.rsplit('/', 1)[-1]}").touch()
while not (folder / "go").exists():
    time.sleep(0.01)
result = runner.render_shard(
    shard, out=out, run_id=spec["run_id"], manifest_dir=str(folder), settings=settings,
    budget=BudgetSpec(**spec),
)
print(json.dumps(dict(result.statuses)))
"""


def test_counter_reserves_only_what_fits_and_settles_on_spend(prefect_server) -> None:
    name = "qwbatch-budget-semantics-test"

    async def go() -> None:
        await create_counter(name, Decimal("0.10"))
        async with PrefectBudget(name) as guard:
            first = await guard.reserve(Decimal("0.075"))
            assert first is not None
            assert await guard.reserve(Decimal("0.035")) is None  # 0.11 > 0.10
            await guard.settle(first, Decimal("0.025"))  # billed one image of three
            second = await guard.reserve(Decimal("0.035"))
            assert second is not None
            assert await read_counter(name) == Decimal("0.06")
            assert await guard.reserve(Decimal("0.2")) is None  # more than the whole limit
        await delete_counter(name)
        async with PrefectBudget(name) as guard:
            # A counter that does not exist refuses rather than spend unguarded.
            with pytest.raises(Exception, match="does not exist"):
                await guard.reserve(Decimal("0.01"))

    asyncio.run(go())


@pytest.mark.slow
def test_two_worker_processes_share_one_budget(prefect_server, sim, tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    sim.configure(fast=True, latency_s=0.05, partial_failure_rate=0.2, seed=2)
    manifest = tmp_path / "m.parquet"
    rows = 24
    pq.write_table(
        pa.table(
            {
                "id": [f"row-{i}" for i in range(rows)],
                "prompt": [f"picture {i}" for i in range(rows)],
                "size": ["512*512"] * rows,
                "n": [1 + i % 3 for i in range(rows)],
            }
        ),
        manifest,
    )
    out = tmp_path / "out"
    settings = Settings()
    plan = plan_run(
        manifest,
        open_store(str(out), settings),
        settings=settings,
        table=TABLE,
        run_id="two-workers",
        shard_size=rows // 2,
    )
    assert plan.estimate is not None
    # More than either shard costs (24 images x 0.035 = 0.84), less than both (1.68): the two
    # workers compete for the last third, and whichever is faster leaves the other some.
    limit = Decimal("1.20")
    assert PRICES.cost("qwen-image-2.0", 24) < limit < plan.estimate.total
    spec = BudgetSpec(run_id="two-workers", limit=str(limit), currency="USD", backend="prefect")
    asyncio.run(open_run_budget(spec))

    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "QWBATCH_DASHSCOPE_BASE_URL": sim.base_url,
        "DASHSCOPE_API_KEY": KEY,
        # Leases of a quarter second of traffic: at 20 req/s five requests, so both workers
        # get tokens early (at 500 req/s one lease covered a whole shard, and one worker
        # could spend the budget before the other held a token).
        "QWBATCH_RPS": "20",
        "QWBATCH_MAX_IN_FLIGHT": "8",
        "QWBATCH_BACKOFF_BASE_S": "0.01",
        "QWBATCH_BACKOFF_MAX_S": "0.02",
    }
    spec_json = json.dumps(
        {"run_id": spec.run_id, "limit": spec.limit, "currency": "USD", "backend": "prefect"}
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, key, str(out), str(tmp_path), spec_json],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for key in plan.shard_keys
    ]
    # Both workers are loaded before either spends, so they really compete for the budget.
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < len(workers):
        assert all(w.poll() is None for w in workers), [w.communicate() for w in workers]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (tmp_path / "go").touch()
    outputs = [w.communicate(timeout=120) for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    statuses = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]

    ledger = sim.ledger()
    bill = sum(
        (PRICES.cost(model, images) for model, images in ledger["by_model"].items()), Decimal(0)
    )
    held = asyncio.run(read_counter(spec.counter_name))
    asyncio.run(delete_counter(spec.counter_name))
    assert bill <= limit
    assert bill <= held <= limit  # the server counted every image billed, and no more
    assert all(s.get("succeeded", 0) > 0 for s in statuses), statuses  # both spent
    assert sum(s.get("skipped_budget", 0) for s in statuses) > 0
