"""Finding an async task whose creation answer was lost, so it is harvested, not paid twice.

An async submission can reach the provider and create a task while its answer never reaches
us: the connection drops, or the process dies between the answer and the journal. The task
then runs and is billed, and a blind resubmission would pay a second time. The provider's
task listing (``GET /tasks?model_name=…&start_time=…``) names recent tasks but not their
prompts; a finished task's result echoes its ``orig_prompt``. So :class:`TaskFinder` lists the
model's tasks around the moment the lost submission was sent, skips every task id this
process or the shard's journal already knows, inspects the rest nearest in time first, and
claims the first whose prompt is the request's.

Limits, stated plainly: the match is by model, prompt and time, not by seed or size (the
provider echoes neither), so two requests that differ only in seed, both lost at the same
moment, could swap images; a task that failed is not billed and is never matched; at most
``max_candidates`` tasks are inspected per search.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from qwbatch.errors import QwBatchError
from qwbatch.models import ProviderResult, RenderRequest
from qwbatch.providers.base import Provider, TaskInfo

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


class TaskFinder:
    """Searches the provider's recent tasks for one a lost submission created.

    ``journal_tasks`` holds the task ids the shard's journal knows (it may grow while the
    finder lives); ``window_s`` is how far around the submission time tasks are listed
    (seconds, covering clock skew and a slow first answer).
    """

    def __init__(
        self,
        provider: Provider,
        *,
        journal_tasks: set[str],
        known: KnownTasks = KNOWN_TASKS,
        window_s: float = 120.0,
        max_candidates: int = 50,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.provider = provider
        self.journal_tasks = journal_tasks
        self.known = known
        self.window_s = window_s
        self.max_candidates = max_candidates
        self.clock = clock
        #: task id → its orig_prompt, or None for a task that cannot be ours (failed, no echo).
        self._inspected: dict[str, str | None] = {}
        self._results: dict[str, ProviderResult] = {}
        #: Searches run and tasks found, for the run's report.
        self.searches = 0
        self.found = 0

    async def find(
        self, request: RenderRequest, sent_at: float
    ) -> tuple[str, ProviderResult] | None:
        """The task (id and final result) a lost submission of ``request`` at ``sent_at``
        created, claimed for this request; None when there is none to be found."""
        self.searches += 1
        try:
            listed = await self.provider.list_tasks(
                request.model, sent_at - self.window_s, self.clock() + self.window_s
            )
        except QwBatchError as exc:
            log.warning("cannot list %s tasks to find a lost submission: %s", request.model, exc)
            return None
        for info in self._nearest(listed, sent_at):
            prompt = await self._inspect(info.task_id)
            if prompt == request.prompt and self.known.claim(info.task_id):
                self.journal_tasks.add(info.task_id)
                self.found += 1
                return info.task_id, self._results.pop(info.task_id)
        return None

    def _nearest(self, listed: list[TaskInfo], sent_at: float) -> list[TaskInfo]:
        fresh = [
            info
            for info in listed
            if info.task_id not in self.journal_tasks
            and info.task_id not in self.known
            and self._inspected.get(info.task_id, "") is not None
        ]
        fresh.sort(key=lambda i: abs((i.submitted_at or sent_at) - sent_at))
        return fresh[: self.max_candidates]

    async def _inspect(self, task_id: str) -> str | None:
        """The task's echoed prompt once it has ended; None if it failed or echoes none."""
        if task_id in self._inspected:
            return self._inspected[task_id]
        try:
            result = await self.provider.wait_task(task_id)
        except QwBatchError:
            # Failed or cancelled (never billed), expired, or still running at the deadline:
            # not a task to claim now.
            self._inspected[task_id] = None
            return None
        self._inspected[task_id] = result.orig_prompt
        self._results[task_id] = result
        return result.orig_prompt
