"""TaskFinder against the simulator over HTTP: when a task listing proves that a lost async
submission created no task (so sending it again cannot pay twice), and when it proves
nothing."""

from __future__ import annotations

import asyncio
import time

import pytest
from support import dashscope_provider, make_request

from qwbatch.core.errors import QwBatchError
from qwbatch.core.types import RenderRequest
from qwbatch.providers.base import TaskListing
from qwbatch.providers.dashscope import DashScopeProvider
from qwbatch.render.recovery import KnownTasks, TaskFinder, TaskSearch

MODEL = "qwen-image-plus"


def request(prompt: str) -> RenderRequest:
    return make_request("r", prompt, model=MODEL, size=None)


class CutShortListing(DashScopeProvider):
    """A provider whose listings stop at a page cap before their end."""

    async def list_tasks(self, model: str, start: float, end: float) -> TaskListing:
        return TaskListing(await super().list_tasks(model, start, end), complete=False)


async def search(
    p: DashScopeProvider, lost: RenderRequest, sent_at: float, **options
) -> TaskSearch:
    """One search for ``lost`` by a finder made now, proving absence when it can."""
    finder = TaskFinder(p, journal_tasks=set(), known=KnownTasks(), settle_s=0.0, **options)
    return await finder.search(lost, sent_at, prove_absent=True)


def test_a_listing_of_other_prompts_proves_the_submission_absent(sim) -> None:
    sim.configure(fast=True)
    lost = request("my lost lighthouse")

    async def go() -> None:
        async with dashscope_provider(sim) as p:
            sent_at = time.time()
            await p.submit_task(request("someone else's lighthouse"))
            sim.configure(task_failure_rate=1.0)
            failed = await p.submit_task(request("someone else's failed lighthouse"))
            # Listed once it has failed (a task listed while still running, that fails
            # before it is inspected, proves nothing: the search must not depend on which).
            with pytest.raises(QwBatchError):
                await p.wait_task(failed)
            assert await search(p, lost, sent_at) == TaskSearch(absent=True)
            # A search that only looks never claims absence.
            finder = TaskFinder(p, journal_tasks=set(), known=KnownTasks())
            assert await finder.search(lost, sent_at) == TaskSearch()

    asyncio.run(go())


def test_the_lost_submissions_task_is_found_not_proven_absent(sim) -> None:
    sim.configure(fast=True)
    lost = request("my lost lighthouse")

    async def go() -> None:
        async with dashscope_provider(sim) as p:
            sent_at = time.time()
            task_id = await p.submit_task(lost)
            found = await search(p, lost, sent_at)
            assert found.found is not None
            assert found.found[0] == task_id
            assert not found.absent

    asyncio.run(go())


def test_a_task_whose_outcome_is_unknown_or_a_cut_listing_proves_nothing(sim) -> None:
    sim.configure(fast=True)
    lost = request("my lost lighthouse")

    async def go() -> None:
        async with dashscope_provider(sim, CutShortListing) as cut, dashscope_provider(sim) as p:
            sent_at = time.time()
            assert await search(cut, lost, sent_at) == TaskSearch()
            await p.submit_task(request("a stranger"))
            # More unknown tasks than a proof may inspect.
            assert await search(p, lost, sent_at, max_proof_candidates=0) == TaskSearch()
            sim.configure(queue_s=30.0)
            await p.submit_task(request("a stranger still queued"))
        # Still queued when the finder stops waiting on it: it could be the lost one.
        async with dashscope_provider(sim, task_deadline_s=0.2) as impatient:
            assert await search(impatient, lost, sent_at) == TaskSearch()

    asyncio.run(go())


def test_a_proof_waits_until_the_dead_senders_requests_have_landed(sim) -> None:
    sim.configure(fast=True)
    lost = request("my lost lighthouse")
    now = time.time()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def go() -> None:
        async with dashscope_provider(sim) as p:
            finder = TaskFinder(
                p, journal_tasks=set(), known=KnownTasks(), clock=lambda: now, sleep=sleep
            )
            assert await finder.search(lost, now - 1.0) == TaskSearch()
            assert slept == []  # only a proof waits
            assert (await finder.search(lost, now - 1.0, prove_absent=True)).absent
            assert slept == [finder.settle_s]

    asyncio.run(go())
