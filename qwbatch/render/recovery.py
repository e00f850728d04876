"""Finding an async task whose creation answer was lost, so it is harvested, not paid twice.

An async submission can reach the provider and create a task while its answer never reaches
us: the connection drops, or the process dies between the answer and the journal. The task
then runs and is billed, and a blind resubmission would pay a second time. The provider's
task listing (``GET /tasks?model_name=…&start_time=…``) names recent tasks but not their
prompts; a finished task's result echoes its ``orig_prompt``. So :class:`TaskFinder` lists the
model's tasks around the moment the lost submission was sent, skips every task id this
process or the shard's journal already knows, inspects the rest nearest in time first, and
claims the first whose prompt is the request's.

A resume also needs the opposite answer: a submission that never reached the provider (the
process died between journaling it and sending it, or while it was on the wire) created no
task and costs nothing, so it is sent again without counting as possibly billed; counting it
would spend the request's ambiguous-retry budget on a call nobody paid for, and a request
cut that way by two crashes would end 'ambiguous' unrendered. :meth:`TaskFinder.search`
with ``prove_absent`` says a submission is *absent* only when the listing proves it:

- the process that sent it is gone and ``settle_s`` seconds have passed since this finder
  was made (a request of a dead process still on the wire has landed by then);
- the listing was read to its end; and
- every listed task no journal or engine of this process holds was settled: it ended with
  another prompt, or the listing shows it failed or was cancelled (never billed).

Anything short of that (a listing error, a task still running at the deadline, a task
without a prompt echo, more than ``max_proof_candidates`` unknown tasks) proves nothing, and
the submission counts as possibly billed, as before.

Limits, stated plainly: the match is by model, prompt and time, not by seed or size (the
provider echoes neither), so two requests that differ only in seed, both lost at the same
moment, could swap images; a task that failed is not billed and is never matched; at most
``max_candidates`` tasks are inspected per search that only looks.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from qwbatch.core.errors import QwBatchError
from qwbatch.core.types import ProviderResult, RenderRequest
from qwbatch.providers.base import Provider, TaskInfo, TaskListing

log = logging.getLogger(__name__)


class KnownTasks:
    """Task ids some engine of this process holds: never claimed by a search. Thread-safe.

    Only recent ids matter (a search looks minutes around a lost submission), so once more
    than ``keep`` ids are held, those older than ``max_age_s`` seconds are forgotten.
    """

    def __init__(self, *, keep: int = 10_000, max_age_s: float = 3600.0) -> None:
        self._ids: dict[str, float] = {}
        self._lock = threading.Lock()
        self.keep = keep
        self.max_age_s = max_age_s
        self._limit = keep

    def add(self, task_id: str) -> None:
        with self._lock:
            self._add(task_id)

    def claim(self, task_id: str) -> bool:
        """Mark ``task_id`` known; False if it already was (someone else holds it)."""
        with self._lock:
            if task_id in self._ids:
                return False
            self._add(task_id)
            return True

    def _add(self, task_id: str) -> None:
        now = time.monotonic()
        self._ids[task_id] = now
        if len(self._ids) > self._limit:
            cutoff = now - self.max_age_s
            self._ids = {k: t for k, t in self._ids.items() if t >= cutoff}
            self._limit = max(self.keep, 2 * len(self._ids))  # amortised: prune rarely

    def __contains__(self, task_id: object) -> bool:
        with self._lock:
            return task_id in self._ids


#: Every task id submitted, polled or claimed in this process.
KNOWN_TASKS = KnownTasks()


class Settled(enum.Enum):
    """What inspecting a listed task showed, short of a prompt echo."""

    #: It failed or was cancelled: never billed, never claimed.
    NOT_BILLED = "not billed"
    #: Its outcome is unknown (still running at the deadline, expired, no echo, poll error).
    UNKNOWN = "unknown"


class Absent(enum.Enum):
    """The answer of a search that proved a lost submission created no task."""

    ABSENT = "absent"


#: A submission the provider's listing proves it never accepted: nothing was billed.
ABSENT = Absent.ABSENT

#: Listing statuses of a task that ended without being billed.
_NOT_BILLED_STATUSES = frozenset({"FAILED", "CANCELED"})


@dataclass(frozen=True, slots=True)
class TaskSearch:
    """A search's answer: the task found (id and final result), or whether the listing
    proves the submission created no task at all (``absent``: nothing was billed)."""

    found: tuple[str, ProviderResult] | None = None
    absent: bool = False


class TaskFinder:
    """Searches the provider's recent tasks for one a lost submission created.

    ``journal_tasks`` holds the task ids the shard's journal knows (it may grow while the
    finder lives); ``window_s`` is how far around the submission time tasks are listed
    (seconds, covering clock skew and a slow first answer). ``settle_s`` is how long a
    request of a process that died may still take to reach the provider (seconds), counted
    from when this finder was made: build it after the journal was replayed.
    """

    def __init__(
        self,
        provider: Provider,
        *,
        journal_tasks: set[str],
        known: KnownTasks = KNOWN_TASKS,
        window_s: float = 120.0,
        max_candidates: int = 50,
        max_proof_candidates: int = 1000,
        settle_s: float = 5.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.provider = provider
        self.journal_tasks = journal_tasks
        self.known = known
        self.window_s = window_s
        self.max_candidates = max_candidates
        self.max_proof_candidates = max_proof_candidates
        self.settle_s = settle_s
        self.clock = clock
        self.sleep = sleep
        #: Submissions from before this moment (POSIX seconds) were sent by a process now gone.
        self.made_at = clock()
        #: task id → its orig_prompt, or how it settled without one.
        self._inspected: dict[str, str | Settled] = {}
        self._results: dict[str, ProviderResult] = {}
        #: Searches run, tasks found and submissions proven absent, for the run's report.
        self.searches = 0
        self.found = 0
        self.absent = 0

    async def find(
        self, request: RenderRequest, sent_at: float
    ) -> tuple[str, ProviderResult] | None:
        """The task (id and final result) a lost submission of ``request`` at ``sent_at``
        created, claimed for this request; None when there is none to be found."""
        return (await self.search(request, sent_at)).found

    async def search(
        self, request: RenderRequest, sent_at: float, *, prove_absent: bool = False
    ) -> TaskSearch:
        """Find the task a lost submission of ``request`` at ``sent_at`` created and claim it.

        With ``prove_absent`` (only for a submission of a process that is gone, such as a
        crashed one a resume replays), also say whether the listing proves there is no such
        task; the search then first waits out ``settle_s``.
        """
        self.searches += 1
        if prove_absent:
            wait = self.made_at + self.settle_s - self.clock()
            if wait > 0:
                await self.sleep(wait)
        try:
            listed = await self.provider.list_tasks(
                request.model, sent_at - self.window_s, self.clock() + self.window_s
            )
        except QwBatchError as exc:
            log.warning("cannot list %s tasks to find a lost submission: %s", request.model, exc)
            return TaskSearch()
        fresh = self._fresh(listed, sent_at, keep_unknown=prove_absent)
        limit = self.max_proof_candidates if prove_absent else self.max_candidates
        settled = listed.complete and len(fresh) <= limit
        for info in fresh[:limit]:
            seen = await self._inspect(info)
            if seen == request.prompt:
                if self.known.claim(info.task_id):
                    self.journal_tasks.add(info.task_id)
                    self.found += 1
                    return TaskSearch(found=(info.task_id, self._results.pop(info.task_id)))
                settled = False  # our prompt, claimed by another request: perhaps ours
            elif seen is Settled.UNKNOWN:
                settled = False
        if not (prove_absent and settled):
            return TaskSearch()
        self.absent += 1
        return TaskSearch(absent=True)

    def _fresh(self, listed: TaskListing, sent_at: float, *, keep_unknown: bool) -> list[TaskInfo]:
        """Listed tasks nobody here holds and that may be ours, nearest in time to
        ``sent_at`` first; with ``keep_unknown``, also those whose outcome is unknown."""
        dropped = {Settled.NOT_BILLED} if keep_unknown else {Settled.NOT_BILLED, Settled.UNKNOWN}
        fresh = [
            info
            for info in listed
            if info.task_id not in self.journal_tasks
            and info.task_id not in self.known
            and self._inspected.get(info.task_id) not in dropped
        ]
        fresh.sort(key=lambda i: abs((i.submitted_at or sent_at) - sent_at))
        return fresh

    async def _inspect(self, info: TaskInfo) -> str | Settled:
        """The task's echoed prompt once it has ended, or how it settled without one."""
        task_id = info.task_id
        if task_id in self._inspected:
            return self._inspected[task_id]
        if info.status in _NOT_BILLED_STATUSES:
            self._inspected[task_id] = Settled.NOT_BILLED
            return Settled.NOT_BILLED
        try:
            result = await self.provider.wait_task(task_id)
        except QwBatchError:
            # Failed or cancelled since it was listed (never billed), expired, or still
            # running at the deadline: not a task to claim, and nothing a proof can rest on.
            self._inspected[task_id] = Settled.UNKNOWN
            return Settled.UNKNOWN
        seen = result.orig_prompt if result.orig_prompt is not None else Settled.UNKNOWN
        self._inspected[task_id] = seen
        if result.orig_prompt is not None:
            self._results[task_id] = result
        return seen
