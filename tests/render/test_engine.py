"""The shard executor against the simulator over HTTP and a local store: every outcome path."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from PIL import Image
from render_helpers import render
from store_helpers import FlakyStore
from support import TABLE, engine_settings
from support import simple_request as make_request

from qwbatch.core.errors import StorageTransientError
from qwbatch.core.settings import Settings
from qwbatch.core.types import Alias, CatalogRecord, PlanItem
from qwbatch.providers.dashscope import DashScopeProvider
from qwbatch.render.engine import Engine
from qwbatch.storage.layout import output_key
from qwbatch.storage.stores import open_store


@pytest.fixture
def settings(sim) -> Settings:
    return engine_settings(sim)


def run(items: list[PlanItem], settings: Settings, out: Path) -> tuple[list[CatalogRecord], Engine]:
    store = open_store(str(out), settings)

    async def go() -> tuple[list[CatalogRecord], Engine]:
        async with DashScopeProvider.from_settings(settings) as provider:
            engine = Engine(
                provider=provider, store=store, table=TABLE, settings=settings, run_id="test-run"
            )
            return await engine.run_items(items), engine

    return asyncio.run(go())


def test_success_stores_verified_png_with_metadata(sim, settings, tmp_path) -> None:
    request = make_request(n=2)
    records, engine = run([PlanItem(request)], settings, tmp_path)
    assert [r.status for r in records] == ["succeeded", "succeeded"]
    assert engine.billed_images == 2 == sim.ledger()["billed_images"]
    for index, record in enumerate(records):
        path = tmp_path / output_key(request.request_key, index)
        assert record.output_uri == path.as_uri()
        with Image.open(path) as img:
            assert (img.width, img.height) == (512, 512) == (record.width, record.height)
        assert record.cost == pytest.approx(0.035)  # qwen-image-2.0, Singapore, USD
        assert record.currency == "USD"
        meta = open_store(str(tmp_path), settings).head(output_key(request.request_key, index))
        assert meta is not None
        assert meta.metadata["request-key"] == request.request_key
        assert meta.metadata["seed"] == "1"


def test_folded_duplicates_are_recorded_once_billed_once(sim, settings, tmp_path) -> None:
    request = make_request()
    item = PlanItem(request, [Alias("r2", 1, (("variant", "b"),))])
    records, _ = run([item], settings, tmp_path)
    assert [(r.row_id, r.status) for r in records] == [("r1", "succeeded"), ("r2", "deduplicated")]
    assert records[1].output_uri == records[0].output_uri
    assert records[1].cost == 0
    assert records[1].tags == {"variant": "b"}
    assert sim.ledger()["billed_images"] == 1


def test_transient_5xx_is_retried(sim, settings, tmp_path) -> None:
    sim.configure(error_5xx_rate=0.5, seed=3)
    records, _ = run(
        [PlanItem(make_request(f"p{i}", row_id=f"r{i}")) for i in range(8)], settings, tmp_path
    )
    assert all(r.status == "succeeded" for r in records)
    assert max(r.attempts for r in records) > 1
    assert sim.ledger()["billed_images"] == 8


def test_moderation_is_terminal_and_costs_nothing(sim, settings, tmp_path) -> None:
    records, _ = run([PlanItem(make_request("__moderate__ something"))], settings, tmp_path)
    assert [r.status for r in records] == ["moderated"]
    assert records[0].error_code == "DataInspectionFailed"
    assert records[0].attempts == 1
    assert records[0].cost == 0


def test_bad_parameters_fail_without_retry(sim, settings, tmp_path) -> None:
    # 300*300 is below the 512*512 pixel floor: the simulator answers 400 InvalidParameter.
    records, _ = run([PlanItem(make_request(size="300*300"))], settings, tmp_path)
    assert records[0].status == "failed"
    assert records[0].error_code == "InvalidParameter"
    assert records[0].attempts == 1


def test_dropped_connection_is_ambiguous_and_retried_at_most_once(sim, settings, tmp_path) -> None:
    sim.configure(drop_connection_rate=1.0)
    records, engine = run([PlanItem(make_request())], settings, tmp_path)
    assert [r.status for r in records] == ["ambiguous"]
    assert records[0].attempts == 2  # the call, and one ambiguous retry (the default)
    # The simulator billed both calls; qwbatch reports them as possible spend, not cost.
    assert sim.ledger()["billed_images"] == 2
    assert engine.possible_extra_images == 2
    assert records[0].cost == 0


def test_corrupt_download_is_retried_without_regenerating(sim, settings, tmp_path) -> None:
    sim.configure(corrupt_image_rate=1.0)
    records, _ = run([PlanItem(make_request())], settings, tmp_path)
    # Every download is corrupt: the image fails, but the generation happened once and is billed.
    assert records[0].status == "failed"
    assert records[0].error_code == "ImageError"
    assert records[0].cost == pytest.approx(0.035)
    assert sim.ledger()["billed_images"] == 1


def test_async_endpoint_is_used_for_qwen_image_plus(sim, settings, tmp_path) -> None:
    request = make_request(model="qwen-image-plus", size="1328*1328")
    records, _ = run([PlanItem(request)], settings, tmp_path)
    assert records[0].status == "succeeded"
    assert records[0].provider_task_id
    ledger = sim.ledger()
    assert ledger["billed_images"] == 1
    assert ledger["entries"][0]["task_id"] == records[0].provider_task_id


def test_partial_failure_bills_only_successes(sim, settings, tmp_path) -> None:
    sim.configure(partial_failure_rate=0.5, seed=11)
    records, engine = run([PlanItem(make_request(n=6))], settings, tmp_path)
    ok = [r for r in records if r.status == "succeeded"]
    assert 0 < len(ok) < 6
    assert engine.billed_images == len(ok) == sim.ledger()["billed_images"]
    assert sum(r.cost for r in records) == pytest.approx(0.035 * len(ok))
    assert records[-1].status == "failed"
    assert records[-1].error_code == "PartialFailure"


def test_outputs_already_in_store_are_not_requested_again(sim, settings, tmp_path) -> None:
    request = make_request()
    run([PlanItem(request)], settings, tmp_path)
    records, engine = run([PlanItem(request)], settings, tmp_path)
    assert [r.status for r in records] == ["deduplicated"]
    assert engine.billed_images == 0
    assert sim.ledger()["billed_images"] == 1


def test_throttling_honours_retry_after_and_recovers(sim, settings, tmp_path) -> None:
    # Our ceiling (500 rps) is far above the simulated account's 5 rps: 429s must come, and
    # every request must still end rendered, once, by waiting as the server asked.
    sim.configure(rps_by_model={"qwen-image-2.0": 5.0}, burst=1, retry_after_s=0.3)
    items = [PlanItem(make_request(f"t{i}", row_id=f"t{i}")) for i in range(6)]
    records, _ = run(items, settings.model_copy(update={"max_attempts": 8}), tmp_path)
    assert all(r.status == "succeeded" for r in records)
    ledger = sim.ledger()
    assert ledger["throttled"] > 0
    assert ledger["billed_images"] == 6


def test_a_store_outage_retries_the_writes_not_the_download(sim, settings, tmp_path) -> None:
    """The writes share the verification's worker-thread hop; when they fail, they alone are
    retried: the image is downloaded once and generated once."""
    store = FlakyStore(tmp_path, StorageTransientError("local put: the store is down"), 3)
    settings = settings.model_copy(update={"store_retry_s": 30.0})
    request = make_request()
    records = render([PlanItem(request)], settings, tmp_path, store=store, write_part=False)
    assert [r.status for r in records] == ["succeeded"]
    assert store.fail_puts == 0
    assert store.head(output_key(request.request_key, 0)) is not None
    ledger = sim.ledger()
    assert ledger["billed_images"] == 1
    assert ledger["requests"]["results"] == 1
