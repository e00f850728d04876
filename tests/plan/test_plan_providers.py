"""Plans with FLUX and GPT Image rows: the streaming estimate prices each request by its size,
inputs and quality, as the in-memory plan (and the budget) does."""

from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from qwbatch.budget.policy import BudgetPolicy
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.plan import plan_run
from qwbatch.storage.stores import LocalStore

TABLE = ModelTable.load()


def test_the_streaming_estimate_prices_requests_as_the_in_memory_one(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, format="PNG")
    (tmp_path / "in.png").write_bytes(buffer.getvalue())
    rows = {
        "id": ["a", "b", "c", "d", "e", "f"],
        "prompt": ["p1", "p2", "p3", "p4", "p5", "p6"],
        "model": [
            "flux-2-pro",
            "flux-2-pro",
            "gpt-image-2",
            "gpt-image-2",
            "qwen-image-2.0",
            "flux-2-max",
        ],
        "size": ["2048*1024", None, "1024*1024", "1536*1024", None, "1024*1024"],
        "mode": ["generate", "generate", "generate", "generate", "generate", "edit"],
        "params": [None, None, '{"quality": "low"}', None, None, None],
        "input_images": [None, None, None, None, None, ["in.png"]],
        "models": [None, None, None, None, "qwen-image-2.0,gpt-image-2", None],
    }
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table(rows), manifest)
    settings = Settings(default_model="qwen-image-2.0", shard_size=2)
    estimates = {}
    for name in ("stream", "memory"):
        budget = BudgetPolicy(Decimal(10**6), "refuse") if name == "memory" else None
        store = LocalStore(tmp_path / name)
        plan = plan_run(manifest, store, settings=settings, table=TABLE, run_id="r", budget=budget)
        assert plan.estimate is not None
        estimates[name] = plan.estimate
    assert estimates["stream"].total == estimates["memory"].total
    by_model = estimates["stream"].by_model
    assert by_model["flux-2-pro"].cost == Decimal("0.045") + Decimal("0.03")
    # low at 1024², high at 1536×1024 (1.5 × 0.125), and the models row's high at 1024².
    assert by_model["gpt-image-2"].cost == Decimal("0.0083") + Decimal("0.1875") + Decimal("0.125")
    assert by_model["flux-2-max"].cost == Decimal("0.07") + Decimal("0.03")  # one input MP
    assert estimates["stream"].requests == 7
