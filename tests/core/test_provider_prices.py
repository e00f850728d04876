"""The model table's FLUX and GPT Image rows: sizes, inputs, dead models and USD prices."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from qwbatch.core.costs import PriceTable, token_cost, usd_image_price
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.core.types import RenderRequest

TABLE = ModelTable.load()


def _request(model: str, size: str | None, *, inputs: int = 0, n: int = 1) -> RenderRequest:
    return RenderRequest(
        row_id="r",
        row_number=0,
        request_key="k",
        model=model,
        mode="edit" if inputs else "generate",
        prompt="p",
        size=size,
        n=n,
        input_images=tuple(f"in{i}.png" for i in range(inputs)),
        input_sha256=tuple("0" * 64 for _ in range(inputs)),
    )


def test_every_row_names_its_provider() -> None:
    assert TABLE.get("qwen-image-2.0").provider == "dashscope"
    assert TABLE.get("flux-2-pro").provider == "bfl"
    assert TABLE.get("gpt-image-2").provider == "openai"
    assert TABLE.get("flux-2-pro").task_only
    assert TABLE.get("flux-2-pro").max_inputs == 8
    assert TABLE.get("flux-2-klein-4b").max_inputs == 4
    assert TABLE.get("gpt-image-2").max_inputs == 16
    assert TABLE.get("gpt-image-1").shutdown == "2026-10-23"


def test_sizes_follow_each_providers_rules() -> None:
    flux = TABLE.get("flux-2-pro")
    assert flux.size_problem("1024*1024") is None
    assert "multiples of 16" in (flux.size_problem("1000*1000") or "")
    assert "pixels" in (flux.size_problem("4096*2048") or "")  # above 4 MP
    gpt = TABLE.get("gpt-image-2")
    assert gpt.size_problem("3840*2160") is None
    assert "aspect" in (gpt.size_problem("3840*1024") or "")
    assert "aspect" in (TABLE.get("flux-kontext-pro").size_problem("3000*1000") or "")


def test_bfl_megapixel_formula() -> None:
    pro = TABLE.get("flux-2-pro")
    # 1 MP out: the first-MP price; 2 MP out: + one extra MP; an edit adds its input MP.
    assert usd_image_price(pro, "1024*1024") == Decimal("0.03")
    assert usd_image_price(pro, "2048*1024") == Decimal("0.045")
    assert usd_image_price(pro, "1024*1024", inputs=2) == Decimal("0.06")
    assert usd_image_price(TABLE.get("flux-kontext-max"), "1024*1024") == Decimal("0.08")


def test_openai_tokens_bill_and_quality_estimates() -> None:
    gpt = TABLE.get("gpt-image-2")
    # 50 text tokens in, 4160 image tokens out at 5 and 30 USD per million.
    assert token_cost(gpt, text_in=50, image_out=4160) == Decimal("0.12505")
    assert usd_image_price(gpt, "1024*1024", quality="low") == Decimal("0.0083")
    assert usd_image_price(gpt, "2048*1024") == Decimal("0.250")  # high, twice the area


def test_price_table_prices_requests_by_size_in_usd_runs_only() -> None:
    usd = PriceTable.load(Settings(region="singapore"), TABLE)
    assert usd.unit_price("flux-2-pro") == Decimal("0.03")
    assert usd.request_cost(_request("flux-2-pro", "2048*1024")) == Decimal("0.045")
    assert usd.request_cost(_request("gpt-image-2", "1024*1024", n=2)) == Decimal("0.250")
    assert usd.billed_cost(_request("flux-2-pro", None), 1, 0.031) == Decimal("0.031")
    cny = PriceTable.load(Settings(region="beijing"), TABLE)
    assert cny.request_price(_request("flux-2-pro", None)) is None


def test_negotiated_flat_price_for_a_provider_section(tmp_path: Path) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text('[bfl]\n"flux-2-pro" = 0.02\n[openai]\n"gpt-image-2" = 0.05\n')
    table = PriceTable.load(Settings(region="singapore", prices_file=prices), TABLE)
    assert table.request_cost(_request("flux-2-pro", "2048*1024")) == Decimal("0.02")
    assert table.request_cost(_request("gpt-image-2", None)) == Decimal("0.05")
