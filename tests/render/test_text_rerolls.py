"""Text checks in the engine: the simulator misspells, the real OCR engine reads, re-rolls pay.

Every test renders real images (512², the smallest size qwen-image-2.0 takes) whose quoted
words the simulator draws, reads them with RapidOCR in a worker process, and checks the
bill against the simulator's own ledger. The simulator marks the images it misspelt on
purpose (a PNG text chunk): the ground truth a passing image is checked against.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import render_helpers
from PIL import Image

from qwbatch.budget import LocalBudget
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.core.stop import StopSignal
from qwbatch.core.types import CatalogRecord, PlanItem, RenderRequest
from qwbatch.providers.dashscope import DashScopeProvider
from qwbatch.render.engine import Engine
from qwbatch.render.journal import StoreJournal
from qwbatch.render.rerolls import reroll_seed
from qwbatch.storage.stores import LocalStore
from qwbatch.text import TextReader

KEY = "sk-text-test-key"
TABLE = ModelTable.load()
RUN = "run-text"
PRICE = Decimal("0.035")  # one qwen-image-2.0 image
PHRASES = [
    ("SALE 20% OFF", "秋季新品"),
    ("Lantern Night",),
    ("灯笼夜市",),
    ("Open 7 Days", "全场八折"),
    ("Fresh Bread",),
    ("新年快乐", "2026"),
]


@pytest.fixture(scope="module")
def reader() -> Iterator[TextReader]:
    """One OCR worker for the module (the model loads once)."""
    text_reader = TextReader(workers=1)
    yield text_reader
    text_reader.close()


def settings_for(sim, **text: object) -> Settings:
    sim.configure(api_key=KEY)
    return Settings(
        dashscope_base_url=sim.base_url,
        dashscope_api_key=KEY,
        backoff_base_s=0.01,
        backoff_max_s=0.02,
        rps=500,
        max_in_flight=16,
        budget_backend="local",
        **text,
    )


def text_request(number: int, phrases: tuple[str, ...], *, n: int = 1) -> RenderRequest:
    quoted = " and ".join(f"“{p}”" for p in phrases)
    request = render_helpers.make_request(
        f"row-{number}", f"A poster {number} with {quoted}", n=n, seed=100 + number
    )
    return dataclasses.replace(request, expected_text=phrases, row_number=number)


def run_engine(
    items: list[PlanItem],
    settings: Settings,
    out: Path,
    reader: TextReader,
    *,
    provider_type: type[DashScopeProvider] = DashScopeProvider,
    budget: LocalBudget | None = None,
    stop: StopSignal | None = None,
) -> tuple[list[CatalogRecord], Engine]:
    store = LocalStore(out)

    async def go() -> tuple[list[CatalogRecord], Engine]:
        journal = StoreJournal.open(store, RUN, "shard-00000")
        async with provider_type.from_settings(settings) as provider:
            engine = Engine(
                provider=provider,
                store=store,
                table=TABLE,
                settings=settings,
                run_id=RUN,
                journal=journal,
                budget=budget,
                reader=reader,
                stop=stop,
            )
            return await engine.run_items(items), engine

    return asyncio.run(go())


def misspelt(record: CatalogRecord) -> bool:
    """Whether the simulator misspelt the image a record keeps (its PNG says so)."""
    assert record.output_uri is not None
    path = Path(record.output_uri.removeprefix("file://"))
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        return "qwbatch-simulator-misspelt" in image.info


def test_misspelt_images_are_rerolled_and_every_passing_image_is_right(
    sim, tmp_path, reader
) -> None:
    settings = settings_for(sim, text_rerolls=3)
    sim.configure(misspell_rate=0.4, seed=5)
    requests = [text_request(i, p) for i, p in enumerate(PHRASES)]
    records, engine = run_engine([PlanItem(r) for r in requests], settings, tmp_path, reader)

    assert len(records) == len(requests)
    passed = [r for r in records if r.status == "succeeded"]
    assert passed, [r.error_message for r in records]
    for record in passed:
        assert record.text_ok is True
        assert record.text_cer == 0.0
        assert not misspelt(record), record.text_found  # never a misspelt image called good
    by_row = {r.row_id: r for r in requests}
    for record in records:
        assert record.status in ("succeeded", "text_mismatch")
        assert record.text_expected == list(by_row[record.row_id].expected_text)
        if record.status == "text_mismatch":
            assert record.rerolls == 3
            assert record.text_ok is False
            assert misspelt(record)

    # Billed and counted: every re-roll is one more image, in the row's cost and the totals.
    rerolls = sum(r.rerolls for r in records)
    assert rerolls > 0
    ledger = sim.ledger()
    assert ledger["billed_images"] == engine.billed_images == len(requests) + rerolls
    assert sum(Decimal(str(r.cost)) for r in records) == PRICE * (len(requests) + rerolls)
    # The kept seed is the one that made the kept image: the row's, or a derived re-roll's.
    for record in records:
        request = by_row[record.row_id]
        seeds = [request.seed] + [reroll_seed(request.seed, 0, a) for a in range(1, 4)]
        assert record.seed in seeds[: record.rerolls + 1]
    billed = [(e["prompt_sha256"], e["seed"]) for e in ledger["entries"]]
    assert len(billed) == len(set(billed))


def test_a_budget_stops_rerolls(sim, tmp_path, reader) -> None:
    settings = settings_for(sim, text_rerolls=3)
    sim.configure(misspell_rate=1.0, seed=1)  # every image misspelt: it would re-roll 3 times
    guard = LocalBudget(PRICE * 2)  # the first image and one re-roll
    [record], _ = run_engine(
        [PlanItem(text_request(1, ("Fresh Bread",)))], settings, tmp_path, reader, budget=guard
    )
    assert record.status == "text_mismatch"
    assert record.rerolls == 1
    assert "budget" in (record.error_message or "").lower()
    assert Decimal(str(record.cost)) == PRICE * 2
    assert sim.ledger()["billed_images"] == 2
    assert guard.used == PRICE * 2


def test_n_greater_than_one_judges_each_image_on_its_own(sim, tmp_path, reader) -> None:
    settings = settings_for(sim, text_rerolls=0)
    sim.configure(misspell_rate=0.5, seed=3)
    records, _ = run_engine(
        [PlanItem(text_request(2, ("Lantern Night",), n=3))], settings, tmp_path, reader
    )
    assert [r.image_index for r in records] == [0, 1, 2]
    for record in records:
        assert record.text_ok is (not misspelt(record))
        assert record.status == ("succeeded" if record.text_ok else "text_mismatch")
        assert record.rerolls == 0


class Killed(Exception):
    """The process 'dies' here (not a QwBatchError: nothing in the engine handles it)."""


class DiesDownloadingAReroll(DashScopeProvider):
    """Dies fetching the first re-roll's image: the re-roll is billed and its answer
    journaled, and the process is gone before the image is stored."""

    downloads = 0

    async def download(self, url: str) -> bytes:
        DiesDownloadingAReroll.downloads += 1
        if DiesDownloadingAReroll.downloads == 2:
            raise Killed(url)
        return await super().download(url)


def test_a_kill_during_rerolls_resumes_without_paying_twice(sim, tmp_path, reader) -> None:
    settings = settings_for(sim, text_rerolls=2)
    sim.configure(misspell_rate=1.0, seed=2)
    item = PlanItem(text_request(3, ("灯笼夜市",)))
    with pytest.raises(Killed):
        run_engine([item], settings, tmp_path, reader, provider_type=DiesDownloadingAReroll)
    assert sim.ledger()["billed_images"] == 2  # the row's image and its first re-roll

    [record], _engine = run_engine([item], settings, tmp_path, reader)
    ledger = sim.ledger()
    assert record.status == "text_mismatch"
    assert record.rerolls == 2
    billed = [(e["prompt_sha256"], e["seed"]) for e in ledger["entries"]]
    assert len(billed) == len(set(billed)) == 3  # the first re-roll harvested, not re-sent
    assert Decimal(str(record.cost)) == PRICE * 3


STOP = StopSignal()


class StopsAfterTheFirstReroll(DashScopeProvider):
    """A stop (Ctrl-C) arrives while the first re-roll's image is being fetched."""

    downloads = 0

    async def download(self, url: str) -> bytes:
        StopsAfterTheFirstReroll.downloads += 1
        if StopsAfterTheFirstReroll.downloads == 2:
            STOP.set("test")
        return await super().download(url)


def test_a_stop_during_rerolls_leaves_the_row_and_a_resume_finishes_it(
    sim, tmp_path, reader
) -> None:
    settings = settings_for(sim, text_rerolls=2)
    sim.configure(misspell_rate=1.0, seed=6)
    item = PlanItem(text_request(4, ("Fresh Bread",)))
    STOP.clear()
    records, engine = run_engine(
        [item], settings, tmp_path, reader, provider_type=StopsAfterTheFirstReroll, stop=STOP
    )
    # The re-roll on the wire finished; the next one was not started; the row is left.
    assert records == []
    assert engine.left == 1
    assert sim.ledger()["billed_images"] == 2

    [record], _ = run_engine([item], settings, tmp_path, reader)
    assert record.status == "text_mismatch"
    assert record.rerolls == 2
    billed = [(e["prompt_sha256"], e["seed"]) for e in sim.ledger()["entries"]]
    assert len(billed) == len(set(billed)) == 3  # the row, re-roll 1 (restored), re-roll 2
    assert Decimal(str(record.cost)) == PRICE * 3
