"""How a provider waits for an async task: poll, sleep doubling to a cap, give up at a deadline.

DashScope's tasks and BFL's (every BFL call is one) are polled alike. A failed poll (429,
5xx, a transport error: any :class:`ProviderTransientError`) is polled again, waiting at
least what the server asked (``Retry-After``): polling is free. A task still running at the
deadline raises :class:`TaskDeadlineError`; it is not cancelled, and its handle can be
polled again later (a resumed run does).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from qwbatch.core.errors import ProviderTransientError, TaskDeadlineError
from qwbatch.core.types import ProviderResult

_log = logging.getLogger(__name__)

#: One poll: the provider's answer (a JSON object). A transient error is polled again.
Poll = Callable[[], Awaitable[dict[str, Any]]]
#: What an answer says: the task's result once it ended (or its error, raised and never
#: polled again, even a transient one), else its status while it runs.
Outcome = Callable[[dict[str, Any]], ProviderResult | str]


@dataclass(frozen=True, slots=True)
class PollSchedule:
    """Poll every ``interval_s`` seconds, doubling to ``max_interval_s``, for at most
    ``deadline_s`` seconds. ``sleep`` and ``clock`` (monotonic seconds) are seams for tests.
    """

    interval_s: float
    max_interval_s: float
    deadline_s: float
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.interval_s <= self.max_interval_s or self.deadline_s <= 0:
            raise ValueError("need 0 < poll_interval_s <= poll_max_interval_s and a deadline > 0")

    async def until_final(
        self, poll: Poll, outcome: Outcome, *, task: str, handle: str
    ) -> ProviderResult:
        """Call ``poll`` until ``outcome`` of its answer is a result; ``task`` names the task
        in messages and ``handle`` is what :class:`TaskDeadlineError` carries to poll it again.
        """
        deadline = self.clock() + self.deadline_s
        interval = self.interval_s
        while True:
            try:
                answer = await poll()
            except ProviderTransientError as exc:
                delay, last = max(interval, exc.retry_after or 0.0), exc.message
                _log.info("poll of task %s failed (%s); polling again", task, exc.code)
            else:
                ended = outcome(answer)  # a failed task raises here, outside the retry
                if not isinstance(ended, str):
                    return ended
                delay, last = interval, f"status {ended}"
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise TaskDeadlineError(
                    f"task {task} had not ended after {self.deadline_s:g} s ({last}); "
                    "it was not cancelled, poll it again later",
                    task_id=handle,
                )
            await self.sleep(min(delay, remaining))
            interval = min(interval * 2, self.max_interval_s)
