"""The run journal: group commit, durability before return, replay, and a store that fails."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import support
from store_helpers import FlakyStore

from qwbatch.core.errors import JournalError, StorageError, StorageTransientError
from qwbatch.core.types import CatalogRecord, RenderRequest
from qwbatch.render.journal import Finished, StoreJournal, read_journal
from qwbatch.storage.layout import journal_prefix
from qwbatch.storage.stores import LocalStore


def make_request(i: int) -> RenderRequest:
    return support.make_request(
        f"r{i}", f"prompt {i}", model="qwen-image-plus", size=None, seed=i, row_number=i
    )


def test_concurrent_appends_share_writes_and_are_durable_on_return(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    journal = StoreJournal(store, "run-1", "shard-00000")
    requests = [make_request(i) for i in range(64)]

    async def go() -> None:
        await asyncio.gather(*(journal.intent(r, "async", 1) for r in requests))
        # Each intent returned only once it was in the store: a fresh reader sees them all.
        assert len(read_journal(store, "run-1", "shard-00000").in_flight()) == 64
        await asyncio.gather(*(journal.task(r, f"task-{i}") for i, r in enumerate(requests)))
        await journal.close()

    asyncio.run(go())
    assert journal.entries == 128
    # Group commit: 128 entries from 64 concurrent requests took far fewer objects.
    assert journal.writes < 32
    state = read_journal(store, "run-1", "shard-00000")
    assert state.known_task(requests[5].request_key) == "task-5"
    assert state.in_flight() == {}


def test_replay_tells_resume_what_not_to_redo(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    sync_cut, sync_twice, async_orphan, async_known, finished = (make_request(i) for i in range(5))
    record = CatalogRecord(
        run_id="run-1",
        row_id="r4",
        request_key=finished.request_key,
        mode="generate",
        model="qwen-image-plus",
        prompt="prompt 4",
        size=None,
        seed=4,
        status="succeeded",
        tags={"a": "b"},
        cost=0.03,
    )

    async def go() -> None:
        journal = StoreJournal(store, "run-1", "s")
        await journal.intent(sync_cut, "sync", 1)
        await journal.intent(sync_twice, "sync", 1)
        journal.ambiguous(sync_twice)
        await journal.intent(sync_twice, "sync", 2)
        await journal.intent(async_orphan, "async", 1)
        await journal.intent(async_known, "async", 1)
        await journal.task(async_known, "task-known")
        await journal.intent(finished, "async", 1)
        await journal.task(finished, "task-done")
        journal.done(finished.request_key, Finished([record], billed_images=1))
        await journal.close()

    asyncio.run(go())
    state = read_journal(store, "run-1", "s")
    assert state.prior_ambiguous(sync_cut.request_key) == 1  # cut by the crash
    assert state.prior_ambiguous(sync_twice.request_key) == 2  # one journaled, one cut
    assert state.calls(sync_twice.request_key) == 2
    assert state.orphan_since(async_orphan.request_key) is not None
    assert state.prior_ambiguous(async_orphan.request_key) == 0  # recovery decides
    assert state.known_task(async_known.request_key) == "task-known"
    assert state.known_task(finished.request_key) is None
    done = state.finished(finished.request_key)
    assert done is not None
    assert done.records == [record]
    assert done.billed_images == 1
    # Known tasks are harvested first, then orphans, then the rest.
    assert [state.priority(r.request_key) for r in (async_known, async_orphan, sync_cut)] == [
        0,
        1,
        2,
    ]


def test_a_later_writer_continues_after_an_earlier_one(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    request = make_request(1)

    async def write(journal: StoreJournal, task_id: str) -> None:
        await journal.intent(request, "async", 1)
        await journal.task(request, task_id)
        await journal.close()

    asyncio.run(write(StoreJournal(store, "run-1", "s"), "first"))
    second = StoreJournal.open(store, "run-1", "s")
    assert second.state.known_task(request.request_key) == "first"
    asyncio.run(write(second, "second"))
    assert read_journal(store, "run-1", "s").known_task(request.request_key) == "second"
    assert second.discard() == 4
    assert list(store.list(journal_prefix("run-1"))) == []


def test_a_store_outage_delays_appends_until_it_is_back(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path, StorageTransientError("S3 put failed: cannot reach"), 3)
    journal = StoreJournal(store, "run-1", "s", backoff_s=(0.01, 0.02))  # type: ignore[arg-type]
    request = make_request(1)

    async def go() -> None:
        await journal.intent(request, "sync", 1)
        await journal.close()

    asyncio.run(go())
    assert store.puts == 4
    assert read_journal(store, "run-1", "s").calls(request.request_key) == 1  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "retry_s"),
    [
        (StorageError("S3 put failed: AccessDenied (HTTP 403)"), 60.0),
        (StorageTransientError("S3 put failed: cannot reach"), 0.05),
    ],
)
def test_a_journal_that_cannot_be_written_refuses_to_go_on(
    tmp_path: Path, error: Exception, retry_s: float
) -> None:
    store = FlakyStore(tmp_path, error, 10_000)
    journal = StoreJournal(  # type: ignore[arg-type]
        store, "run-1", "s", retry_s=retry_s, backoff_s=(0.01, 0.02)
    )

    async def go() -> None:
        with pytest.raises(JournalError):
            await journal.intent(make_request(1), "sync", 1)
        # Nothing more may be sent once the journal is broken.
        with pytest.raises(JournalError):
            await journal.intent(make_request(2), "sync", 1)

    asyncio.run(go())


def test_answers_that_never_reached_the_journal_count_as_possibly_billed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    throttled, cut_twice = make_request(1), make_request(2)

    async def go() -> None:
        journal = StoreJournal(store, "run-1", "s")
        await journal.intent(throttled, "sync", 1)
        journal.failed(throttled)  # a 429: answered, nothing billed
        await journal.intent(throttled, "sync", 2)
        # Cut by one crash, resumed, and cut again by the next: both may be billed.
        await journal.intent(cut_twice, "sync", 1)
        await journal.intent(cut_twice, "sync", 2)
        await journal.close()

    asyncio.run(go())
    state = read_journal(store, "run-1", "s")
    assert state.prior_ambiguous(throttled.request_key) == 1
    assert state.prior_ambiguous(cut_twice.request_key) == 2
