"""The price table, the estimate's arithmetic, and the plan-time budget (refuse and trim)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import make_request

from qwbatch.budget.policy import BudgetPolicy, apply, rank
from qwbatch.core.costs import UNTAGGED, PriceTable, estimate, money
from qwbatch.core.errors import BudgetExceededError, ConfigError
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.core.types import PlanItem, RenderRequest
from qwbatch.manifest.reader import read_manifest
from qwbatch.plan.planner import plan_run
from qwbatch.storage.stores import open_store

TABLE = ModelTable.load()


def request(
    row: int,
    *,
    model: str = "qwen-image-2.0",
    n: int = 1,
    priority: int | None = None,
    tags: tuple[tuple[str, str], ...] = (),
) -> RenderRequest:
    return make_request(
        f"r{row}",
        f"prompt {row}",
        model=model,
        size=None,
        n=n,
        seed=row,
        tags=tags,
        row_number=row,
        priority=priority,
    )


# --------------------------------------------------------------------------- price table


def test_default_prices_are_the_documented_ones_per_region() -> None:
    # docs/providers/dashscope.md §7: Singapore in USD, Beijing in CNY, per image.
    singapore = PriceTable.load(Settings(region="singapore"), TABLE)
    beijing = PriceTable.load(Settings(region="beijing"), TABLE)
    assert (singapore.currency, beijing.currency) == ("USD", "CNY")
    assert singapore.unit_price("qwen-image-2.0") == Decimal("0.035")
    assert singapore.unit_price("qwen-image-2.0-pro") == Decimal("0.075")
    assert singapore.unit_price("qwen-image-plus") == Decimal("0.03")
    assert beijing.unit_price("qwen-image-2.0") == Decimal("0.20")
    assert beijing.unit_price("qwen-image-edit") == Decimal("0.30")
    # Every bundled Qwen model has both prices: the table is the one source of them.
    for name in TABLE.names():
        spec = TABLE.get(name)
        if spec.provider == "dashscope":
            assert singapore.unit_price(name) is not None, name
            assert beijing.unit_price(name) is not None, name
        elif spec.name != "dall-e-3":
            # BFL and OpenAI bill in USD: priced in USD runs, unpriced in CNY ones.
            assert singapore.unit_price(name) is not None, name
            assert beijing.unit_price(name) is None, name


def test_negotiated_prices_override_file_then_settings(tmp_path: Path) -> None:
    prices_file = tmp_path / "prices.toml"
    prices_file.write_text(
        '[singapore]\n"qwen-image-2.0" = 0.03\n"qwen-image-max" = 0.07\n'
        '[beijing]\n"qwen-image-2.0" = 0.18\n'
    )
    settings = Settings(prices_file=prices_file, prices={"qwen-image-max": 0.065})
    prices = PriceTable.load(settings, TABLE)
    assert prices.unit_price("qwen-image-2.0") == Decimal("0.03")  # the file
    assert prices.unit_price("qwen-image-max") == Decimal("0.065")  # settings win
    assert prices.unit_price("qwen-image-plus") == Decimal("0.03")  # the table
    beijing = PriceTable.load(settings.model_copy(update={"region": "beijing"}), TABLE)
    assert beijing.unit_price("qwen-image-2.0") == Decimal("0.18")
    # QWBATCH_PRICES is for the run's own region: here Beijing keeps the table's max price.
    assert beijing.unit_price("qwen-image-max") == Decimal("0.065")


def test_bad_prices_file_is_a_clear_config_error(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text('[singapore]\n"qwen-image-2.0" = "cheap"\n')
    with pytest.raises(ConfigError, match="is not a number"):
        PriceTable.load(Settings(prices_file=path), TABLE)
    path.write_text("not toml [")
    with pytest.raises(ConfigError, match="cannot read prices file"):
        PriceTable.load(Settings(prices_file=path), TABLE)
    with pytest.raises(ConfigError, match=">= 0"):
        money(-1)


def test_declared_model_without_price_is_unpriced_not_free() -> None:
    table = ModelTable.load(declared=["qwen-image-9"])
    prices = PriceTable.load(Settings(), table)
    assert prices.unit_price("qwen-image-9") is None
    result = estimate([request(0, model="qwen-image-9", n=2), request(1)], prices)
    assert result.unpriced == {"qwen-image-9": 2}
    assert result.images == 3
    assert result.total == Decimal("0.035")


# --------------------------------------------------------------------------- estimate


def test_estimate_sums_exactly_by_model_and_tag() -> None:
    prices = PriceTable.load(Settings(), TABLE)
    requests = [
        request(0, tags=(("campaign", "autumn"), ("kind", "product"))),
        request(1, tags=(("campaign", "autumn"),)),
        request(2, model="qwen-image-2.0-pro", n=3, tags=(("hero", ""),)),
        request(3),
    ]
    result = estimate(requests, prices)
    assert result.total == Decimal("0.035") * 3 + Decimal("0.075") * 3 == Decimal("0.33")
    assert result.images == 6
    assert result.by_model["qwen-image-2.0"].cost == Decimal("0.105")
    assert result.by_model["qwen-image-2.0-pro"].images == 3
    assert result.by_tag["campaign=autumn"].cost == Decimal("0.070")
    assert result.by_tag["hero"].images == 3  # a plain label keeps its name
    assert result.by_tag[UNTAGGED].requests == 1
    figures = result.to_dict()
    assert figures["total"] == 0.33
    assert figures["by_model"]["qwen-image-2.0-pro"]["unit_price"] == 0.075


def test_estimate_plans_like_a_run_and_writes_nothing(tmp_path: Path) -> None:
    manifest = tmp_path / "m.parquet"
    pq.write_table(
        pa.table(
            {
                "id": ["a", "b", "c", "bad"],
                "prompt": ["a cat", "a cat", "a dog", ""],
                "n": [2, 2, 1, 1],
            }
        ),
        manifest,
    )
    out = tmp_path / "out"
    store = open_store(str(out), Settings())
    plan = plan_run(manifest, store, settings=Settings(), table=TABLE, run_id="x", dry_run=True)
    assert (plan.rows_read, plan.rejected, plan.folded, plan.requests) == (4, 1, 1, 2)
    assert plan.estimate is not None
    assert plan.estimate.images == 3
    assert plan.estimate.total == Decimal("0.105")
    assert not out.exists() or not any(out.rglob("*"))


# --------------------------------------------------------------------------- budgets at plan time


def items(*requests: RenderRequest) -> list[PlanItem]:
    return [PlanItem(r) for r in requests]


def test_refuse_says_what_the_plan_costs() -> None:
    prices = PriceTable.load(Settings(), TABLE)
    plan = items(request(0, n=2), request(1, model="qwen-image-max"))
    with pytest.raises(BudgetExceededError) as info:
        apply(plan, prices, BudgetPolicy(Decimal("0.1")))
    message = str(info.value)
    assert "0.1450 USD" in message  # 2 x 0.035 + 0.075
    assert "0.1000 USD" in message
    assert "Nothing was sent" in message
    outcome = apply(plan, prices, BudgetPolicy(Decimal("0.145")))
    assert (len(outcome.kept), outcome.skipped) == (2, [])


def test_refuse_counts_what_the_run_id_already_spent() -> None:
    prices = PriceTable.load(Settings(), TABLE)
    policy = BudgetPolicy(Decimal("0.1"), spent=Decimal("0.07"))
    with pytest.raises(BudgetExceededError, match="already spent"):
        apply(items(request(0)), prices, policy)


def test_trim_keeps_the_longest_prefix_by_priority_then_row() -> None:
    prices = PriceTable.load(Settings(), TABLE)
    plan = items(
        request(0),  # no priority: after every row with one
        request(1, priority=1),
        request(2, priority=5, n=2),
        request(3, priority=1),
        request(4, priority=5),
    )
    # 4 images fit in 0.15 (4 x 0.035 = 0.14): rows 2 (two images), 4, then 1.
    outcome = apply(plan, prices, BudgetPolicy(Decimal("0.15"), "trim"))
    assert [i.request.row_id for i in outcome.kept] == ["r2", "r4", "r1"]
    assert [i.request.row_id for i in outcome.skipped] == ["r3", "r0"]
    assert sum(prices.request_cost(i.request) for i in outcome.kept) <= Decimal("0.15")


def test_trim_stops_at_the_first_request_that_does_not_fit() -> None:
    prices = PriceTable.load(Settings(), TABLE)
    plan = items(request(0), request(1, model="qwen-image-2.0-pro", n=6), request(2))
    outcome = apply(plan, prices, BudgetPolicy(Decimal("0.1"), "trim"))
    # Row 2 would fit on its own, but the ranking is a prefix: "everything from row 1 on".
    assert [i.request.row_id for i in outcome.kept] == ["r0"]
    assert [i.request.row_id for i in outcome.skipped] == ["r1", "r2"]


def test_budget_refuses_models_without_a_price() -> None:
    table = ModelTable.load(declared=["qwen-image-9"])
    prices = PriceTable.load(Settings(), table)
    with pytest.raises(ConfigError, match="qwen-image-9"):
        apply(items(request(0, model="qwen-image-9")), prices, BudgetPolicy(Decimal(100)))


def test_folded_rows_take_the_higher_priority() -> None:
    low, high = request(0, priority=1), request(0, priority=9)
    assert rank(low, high).priority == 9
    assert rank(high, low).priority == 9
    assert rank(request(0), low).priority == 1
    assert rank(low, request(0)).priority == 1


def test_trim_records_every_skipped_row_including_folded_ones(tmp_path: Path) -> None:
    manifest = tmp_path / "m.parquet"
    pq.write_table(
        pa.table(
            {
                "id": ["a", "b", "b2", "c", "c2"],
                "prompt": ["first", "second", "second", "third", "third"],
                "priority": [1, None, 7, None, None],
            }
        ),
        manifest,
    )
    store = open_store(str(tmp_path / "out"), Settings())
    plan = plan_run(
        manifest,
        store,
        settings=Settings(),
        table=TABLE,
        run_id="t",
        budget=BudgetPolicy(Decimal("0.07"), "trim"),
    )
    # "second" (folded with b2, priority 7) ranks first, then "first" (1); "third" is out.
    assert plan.requests == 2
    assert plan.skipped_budget == 2
    rows = pq.read_table(tmp_path / "out" / "catalog").to_pylist()
    assert sorted((r["row_id"], r["status"]) for r in rows) == [
        ("c", "skipped_budget"),
        ("c2", "skipped_budget"),
    ]
    for row in rows:
        assert row["error_code"] == "BudgetExceeded"
        assert (row["cost"], row["unit_price"]) == (0.0, 0.035)


def test_manifest_priority_is_read_and_checked(tmp_path: Path) -> None:
    manifest = tmp_path / "m.parquet"
    pq.write_table(
        pa.table({"id": ["a", "b", "c"], "prompt": ["x", "y", "z"], "priority": ["3", None, "hi"]}),
        manifest,
    )
    requests, rejects = read_manifest(
        manifest, table=TABLE, default_model="qwen-image-2.0"
    ).collect()
    assert [(r.row_id, r.priority) for r in requests] == [("a", 3), ("b", None)]
    assert [(r.row_id, r.column) for r in rejects] == [("c", "priority")]


def test_priority_does_not_change_the_request_key(tmp_path: Path) -> None:
    manifest = tmp_path / "m.parquet"
    pq.write_table(
        pa.table({"id": ["a", "b"], "prompt": ["same", "same"], "priority": [1, 2]}), manifest
    )
    requests, _ = read_manifest(manifest, table=TABLE, default_model="qwen-image-2.0").collect()
    assert requests[0].request_key == requests[1].request_key
