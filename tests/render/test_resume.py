"""Resuming a shard from its journal, against the simulator over HTTP: nothing paid twice.

Each test stages what a crashed process left behind (journal entries, tasks it created on
the simulator, objects it stored) and runs a fresh engine on the replayed journal.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import support

from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.core.stop import StopSignal
from qwbatch.core.types import CatalogRecord, PlanItem, RenderRequest
from qwbatch.providers.dashscope import DashScopeProvider
from qwbatch.render.engine import Engine
from qwbatch.render.journal import Finished, StoreJournal, read_journal
from qwbatch.render.recovery import TaskFinder
from qwbatch.storage.layout import output_key
from qwbatch.storage.stores import LocalStore

TABLE = ModelTable.load()
RUN = "run-resume"
SHARD = "shard-00000"


def make_request(
    prompt: str, *, model: str = "qwen-image-plus", seed: int = 1, n: int = 1
) -> RenderRequest:
    size = "1328*1328" if model == "qwen-image-plus" else "512*512"
    return support.make_request(f"row-{prompt}", prompt, model=model, seed=seed, n=n, size=size)


@pytest.fixture
def settings(sim) -> Settings:
    sim.configure(fast=True)
    return support.engine_settings(sim)


class Killed(Exception):
    """The process 'dies' here (not a QwBatchError: nothing in the engine handles it)."""


class DiesBeforeSubmitting(DashScopeProvider):
    """A provider whose process is SIGKILLed once a submission is journaled, before its POST
    leaves: the state a kill leaves in the window between the two."""

    async def submit_task(self, request: RenderRequest) -> str:
        raise Killed(request.prompt)


def run_engine(
    items: list[PlanItem],
    settings: Settings,
    out: Path,
    stop: StopSignal | None = None,
    provider_type: type[DashScopeProvider] = DashScopeProvider,
) -> tuple[list[CatalogRecord], Engine]:
    """A fresh engine on the shard's replayed journal, as a resumed process builds it.

    Its task finder waits no settle time before proving a lost submission absent: the
    staged 'crashed' process has ended and sent everything it will ever send.
    """
    store = LocalStore(out)

    async def go() -> tuple[list[CatalogRecord], Engine]:
        journal = StoreJournal.open(store, RUN, SHARD)
        async with provider_type.from_settings(settings) as provider:
            finder = TaskFinder(provider, journal_tasks=journal.known_tasks, settle_s=0.0)
            engine = Engine(
                provider=provider,
                store=store,
                table=TABLE,
                settings=settings,
                run_id=RUN,
                journal=journal,
                finder=finder,
                stop=stop,
            )
            return await engine.run_items(items), engine

    return asyncio.run(go())


def stage(out: Path, settings: Settings, script) -> None:
    """Run ``script(journal, provider)`` as the crashed process did, then 'crash'."""
    store = LocalStore(out)

    async def go() -> None:
        journal = StoreJournal(store, RUN, SHARD)
        async with DashScopeProvider.from_settings(settings) as provider:
            await script(journal, provider)
        await journal.close()

    asyncio.run(go())


def test_a_journaled_task_is_polled_and_harvested_not_resubmitted(sim, settings, tmp_path) -> None:
    request = make_request("a lighthouse at dusk")
    task_ids = []

    async def crashed(journal, provider) -> None:
        await journal.intent(request, "async", 1)
        task_ids.append(await provider.submit_task(request))
        await journal.task(request, task_ids[0])

    stage(tmp_path, settings, crashed)
    records, engine = run_engine([PlanItem(request)], settings, tmp_path)
    assert [r.status for r in records] == ["succeeded"]
    assert records[0].provider_task_id == task_ids[0]
    assert records[0].attempts == 1  # the crashed process's call; none since
    ledger = sim.ledger()
    assert ledger["requests"]["image-synthesis"] == 1
    assert [e["task_id"] for e in ledger["entries"]] == task_ids
    assert engine.billed_images == 1


def test_an_orphaned_submission_is_found_by_listing_tasks(sim, settings, tmp_path) -> None:
    # The process died after the provider created the task, before its id was journaled.
    request = make_request("a red kite over the dunes")
    other = make_request("a blue kite over the dunes")

    async def crashed(journal, provider) -> None:
        await journal.intent(request, "async", 1)
        await provider.submit_task(request)
        await provider.submit_task(other)  # someone else's task in the same window

    stage(tmp_path, settings, crashed)
    records, engine = run_engine([PlanItem(request)], settings, tmp_path)
    assert [r.status for r in records] == ["succeeded"]
    assert engine.recovered_tasks == 1
    assert engine.possible_extra_images == 0
    ledger = sim.ledger()
    assert ledger["requests"]["image-synthesis"] == 2  # the two staged; nothing resubmitted
    assert ledger["requests"]["tasks-list"] >= 1
    mine = [e for e in ledger["entries"] if e["task_id"] == records[0].provider_task_id]
    assert len(mine) == 1
    journal = read_journal(LocalStore(tmp_path), RUN, SHARD)
    assert journal.finished(request.request_key) is not None


def test_an_orphan_that_never_reached_the_provider_is_sent_again(sim, settings, tmp_path) -> None:
    request = make_request("a quiet harbour")

    async def crashed(journal, provider) -> None:
        await journal.intent(request, "async", 1)  # died before the POST left

    stage(tmp_path, settings, crashed)
    records, engine = run_engine([PlanItem(request)], settings, tmp_path)
    assert [r.status for r in records] == ["succeeded"]
    assert records[0].attempts == 2
    # The listing proves it created no task: nothing billed, so no possible spend, and the
    # ambiguous-retry budget is left whole.
    assert (records[0].ambiguous_calls, records[0].possible_cost) == (0, 0.0)
    assert (engine.ambiguous_calls, engine.possible_extra_images) == (0, 0)
    assert engine.finder is not None
    assert engine.finder.absent == 1
    ledger = sim.ledger()
    assert (ledger["requests"]["image-synthesis"], ledger["billed_images"]) == (1, 1)
    calls = read_journal(LocalStore(tmp_path), RUN, SHARD).get(request.request_key).calls
    assert [call.state for call in calls] == ["absent", "answered"]


def test_an_orphan_cut_by_two_crashes_before_reaching_the_provider_is_paid_once(
    sim, settings, tmp_path
) -> None:
    # The flaky kill test's hole: a submission cut by a kill before its POST reached the
    # provider, then its resubmission cut the same way by the next kill. Each was counted as
    # possibly billed, the second spent the ambiguous-retry budget (1), and the request
    # ended 'ambiguous', never rendered, though the provider had billed nothing.
    request = make_request("a harbour at dawn")

    async def crashed(journal, provider) -> None:
        await journal.intent(request, "async", 1)  # killed before the POST left

    stage(tmp_path, settings, crashed)
    with pytest.raises(Killed):  # the first resume is killed before its POST leaves too
        run_engine([PlanItem(request)], settings, tmp_path, provider_type=DiesBeforeSubmitting)
    journal = read_journal(LocalStore(tmp_path), RUN, SHARD)
    assert [call.state for call in journal.get(request.request_key).calls] == ["absent", "sent"]
    assert journal.prior_ambiguous(request.request_key) == 0
    assert sim.ledger()["requests"].get("image-synthesis", 0) == 0

    records, engine = run_engine([PlanItem(request)], settings, tmp_path)
    assert [r.status for r in records] == ["succeeded"]
    assert (records[0].attempts, records[0].ambiguous_calls) == (3, 0)
    assert (engine.ambiguous_calls, engine.possible_extra_images) == (0, 0)
    ledger = sim.ledger()
    assert (ledger["requests"]["image-synthesis"], ledger["billed_images"]) == (1, 1)
    assert [e["task_id"] for e in ledger["entries"]] == [records[0].provider_task_id]


def test_a_journal_left_by_two_such_cuts_before_the_fix_resumes_within_budget(
    sim, settings, tmp_path
) -> None:
    # The journal the kill test's run left: the first cut submission journaled as ambiguous
    # by the old resume, the second cut before its POST. Resumed now, only the first counts.
    request = make_request("a harbour at dusk")

    async def crashed(journal, provider) -> None:
        await journal.intent(request, "async", 1)
        journal.ambiguous(request)
        await journal.intent(request, "async", 2)

    stage(tmp_path, settings, crashed)
    records, engine = run_engine([PlanItem(request)], settings, tmp_path)
    assert [r.status for r in records] == ["succeeded"]
    assert (records[0].attempts, records[0].ambiguous_calls) == (3, 1)
    assert engine.possible_extra_images == 1
    ledger = sim.ledger()
    assert (ledger["requests"]["image-synthesis"], ledger["billed_images"]) == (1, 1)


def test_an_orphan_the_listing_cannot_rule_out_counts_as_possibly_billed(
    sim, settings, tmp_path
) -> None:
    # Someone's task is still queued when the resume lists tasks: it could be the lost
    # submission's, so nothing is proven; the resubmission counts the lost call as ambiguous.
    request = make_request("a copper weathervane")
    sim.configure(queue_s=30.0)

    async def crashed(journal, provider) -> None:
        await journal.intent(request, "async", 1)
        await provider.submit_task(make_request("a queued stranger"))

    stage(tmp_path, settings, crashed)
    sim.configure(queue_s=0.0)
    records, engine = run_engine(
        [PlanItem(request)], settings.model_copy(update={"task_deadline_s": 0.5}), tmp_path
    )
    assert [r.status for r in records] == ["succeeded"]
    assert (records[0].attempts, records[0].ambiguous_calls) == (2, 1)
    assert (engine.ambiguous_calls, engine.possible_extra_images) == (1, 1)
    assert engine.finder is not None
    assert engine.finder.absent == 0


def test_a_sync_call_cut_by_a_crash_counts_as_ambiguous(sim, settings, tmp_path) -> None:
    request = make_request("a paper boat", model="qwen-image-2.0")

    async def crashed(journal, provider) -> None:
        await journal.intent(request, "sync", 1)
        await provider.generate(request)  # billed; the answer died with the process

    stage(tmp_path, settings, crashed)
    records, engine = run_engine([PlanItem(request)], settings, tmp_path)
    assert [r.status for r in records] == ["succeeded"]
    assert (records[0].attempts, records[0].ambiguous_calls) == (2, 1)
    assert engine.ambiguous_calls == 1
    assert engine.possible_extra_images == 1
    # The extra billing is exactly the one call in flight at the crash, and it was reported.
    assert sim.ledger()["billed_images"] == 2


def test_a_journaled_answer_is_harvested_not_paid_again(sim, settings, tmp_path) -> None:
    # The sync call returned and its answer was journaled; the crash came during the download.
    request = make_request("a brass compass", model="qwen-image-2.0")

    async def crashed(journal, provider) -> None:
        await journal.intent(request, "sync", 1)
        journal.answer(request, await provider.generate(request))
        await journal.close()

    stage(tmp_path, settings, crashed)
    records, engine = run_engine([PlanItem(request)], settings, tmp_path)
    assert [r.status for r in records] == ["succeeded"]
    assert (records[0].attempts, records[0].ambiguous_calls) == (1, 0)
    assert (engine.billed_images, engine.possible_extra_images) == (1, 0)
    assert records[0].cost == pytest.approx(0.035)
    ledger = sim.ledger()
    assert (ledger["requests"]["generation"], ledger["billed_images"]) == (1, 1)


def test_an_exhausted_ambiguous_budget_is_not_spent_again(sim, settings, tmp_path) -> None:
    request = make_request("a tin robot", model="qwen-image-2.0")

    async def crashed(journal, provider) -> None:
        await journal.intent(request, "sync", 1)
        journal.ambiguous(request)
        await journal.intent(request, "sync", 2)

    stage(tmp_path, settings, crashed)
    records, engine = run_engine([PlanItem(request)], settings, tmp_path)
    assert [r.status for r in records] == ["ambiguous"]
    assert records[0].ambiguous_calls == 2
    assert engine.possible_extra_images == 2
    assert sim.ledger()["requests"].get("generation", 0) == 0


def test_finished_requests_are_restored_from_the_journal(sim, settings, tmp_path) -> None:
    request = make_request("an origami crane", model="qwen-image-2.0")
    first, engine = run_engine([PlanItem(request)], settings, tmp_path)
    calls = sim.ledger()["requests"]["generation"]
    again, resumed = run_engine([PlanItem(request)], settings, tmp_path)
    assert again == first
    assert sim.ledger()["requests"]["generation"] == calls
    assert resumed.billed_images == engine.billed_images == 1


def test_an_upload_the_journal_missed_is_recorded_as_this_runs_success(
    sim, settings, tmp_path
) -> None:
    # The crash came after the image was stored, before the request's 'done' was journaled.
    request = make_request("a glass of lemonade", model="qwen-image-2.0")
    run_engine([PlanItem(request)], settings, tmp_path)
    store = LocalStore(tmp_path)
    for key in list(store.list(f"runs/{RUN}/journal/")):
        store.delete(key)

    async def crashed(journal, provider) -> None:
        await journal.intent(request, "sync", 1)
        await journal.close()

    stage(tmp_path, settings, crashed)
    generated = sim.ledger()["requests"]["generation"]
    records, _ = run_engine([PlanItem(request)], settings, tmp_path)
    assert [r.status for r in records] == ["succeeded"]
    assert records[0].cost == pytest.approx(0.035)
    assert records[0].output_uri == store.uri(output_key(request.request_key, 0))
    assert sim.ledger()["requests"]["generation"] == generated


def test_an_upload_that_lost_its_metadata_is_verified_and_restored(sim, settings, tmp_path) -> None:
    # A local file is committed before its metadata sidecar: a crash between the two leaves
    # an image with no metadata. The resume checks the bytes and writes the metadata again.
    request = make_request("a copper kettle", model="qwen-image-2.0")
    run_engine([PlanItem(request)], settings, tmp_path)
    store = LocalStore(tmp_path)
    for key in list(store.list(f"runs/{RUN}/journal/")):
        store.delete(key)
    key = output_key(request.request_key, 0)
    store.put(key, store.get(key), content_type="image/png")  # same bytes, no metadata

    async def crashed(journal, provider) -> None:
        await journal.intent(request, "sync", 1)
        await journal.close()

    stage(tmp_path, settings, crashed)
    records, _ = run_engine([PlanItem(request)], settings, tmp_path)
    assert [r.status for r in records] == ["succeeded"]
    assert records[0].sha256
    assert records[0].cost == pytest.approx(0.035)
    assert store.head(key).metadata["prompt"] == "a copper kettle"
    assert sim.ledger()["requests"]["generation"] == 1


def test_a_dropped_async_submission_is_recovered_in_the_same_run(sim, settings, tmp_path) -> None:
    sim.configure(drop_connection_rate=1.0)
    request = make_request("a neon fox")
    records, engine = run_engine([PlanItem(request)], settings, tmp_path)
    assert [r.status for r in records] == ["succeeded"]
    assert engine.recovered_tasks == 1
    assert (engine.ambiguous_calls, engine.possible_extra_images) == (0, 0)
    ledger = sim.ledger()
    assert ledger["dropped"] == 1
    assert ledger["requests"]["image-synthesis"] == 1
    assert ledger["billed_images"] == 1


def test_a_failed_task_is_submitted_again_not_polled_forever(sim, settings, tmp_path) -> None:
    sim.configure(task_failure_rate=1.0)
    request = make_request("a stormy sea")
    records, _ = run_engine([PlanItem(request)], settings, tmp_path)
    assert [r.status for r in records] == ["failed"]
    assert records[0].error_code == "InternalError.Algo"
    assert records[0].attempts == settings.max_attempts
    ledger = sim.ledger()
    assert ledger["requests"]["image-synthesis"] == settings.max_attempts
    assert ledger["billed_images"] == 0


def test_a_stop_leaves_waiting_work_to_the_journal_and_resume_finishes_it(
    sim, settings, tmp_path
) -> None:
    sim.configure(latency_s=0.4)
    items = [PlanItem(make_request(f"kite {i}", seed=i)) for i in range(12)]
    stop = StopSignal()
    timer = threading.Timer(0.3, stop.set, kwargs={"reason": "SIGINT"})
    timer.start()
    first, engine = run_engine(
        items, settings.model_copy(update={"max_in_flight": 4}), tmp_path, stop=stop
    )
    timer.join()
    assert engine.left > 0
    assert len(first) + engine.left == len(items)
    journal = read_journal(LocalStore(tmp_path), RUN, SHARD)
    # No call was cut: each abandoned request had its task id journaled before it was let go.
    assert journal.in_flight() == {}
    assert any(state.task_ids and not state.finished for state in journal.requests.values())

    rest, _ = run_engine(items, settings, tmp_path)
    assert sorted(r.row_id for r in rest) == sorted(i.request.row_id for i in items)
    assert all(r.status == "succeeded" for r in rest)
    ledger = sim.ledger()
    prompts = [e["prompt_sha256"] for e in ledger["entries"]]
    assert len(prompts) == len(set(prompts)) == len(items)  # nobody billed twice
    assert ledger["requests"]["image-synthesis"] == len(items)


def test_a_done_entry_round_trips_its_records(tmp_path) -> None:
    # A 'done' entry round-trips a record exactly (tags, lists, None) through JSON.
    record = CatalogRecord(
        run_id=RUN,
        row_id="r",
        request_key="k",
        mode="generate",
        model="m",
        prompt="猫",
        size=None,
        seed=1,
        status="failed",
        error_code="X",
        tags={"t": "v"},
        input_images=["a.png"],
        input_sha256=["0" * 64],
    )
    store = LocalStore(tmp_path)

    async def go() -> None:
        journal = StoreJournal(store, RUN, SHARD)
        journal.done("k", Finished([record]))
        await journal.close()

    asyncio.run(go())
    finished = read_journal(store, RUN, SHARD).finished("k")
    assert finished is not None
    assert finished.records == [record]
