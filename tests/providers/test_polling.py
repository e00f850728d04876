"""PollSchedule: what is polled again, how long it waits, and when it gives up."""

from __future__ import annotations

from typing import Any

import pytest

from qwbatch.core.errors import ProviderTransientError, TaskDeadlineError, ThrottledError
from qwbatch.core.types import ProviderImage, ProviderResult
from qwbatch.providers.polling import PollSchedule

pytestmark = pytest.mark.anyio
DONE = ProviderResult(images=(ProviderImage(url="https://x/1.png", index=0),), task_id="t")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Task:
    """Answers polls from a list (an exception is raised); time passes only in sleeps."""

    def __init__(self, *answers: dict[str, Any] | Exception) -> None:
        self.answers = list(answers)
        self.polls = 0
        self.now = 0.0
        self.sleeps: list[float] = []

    async def poll(self) -> dict[str, Any]:
        self.polls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def schedule(self, deadline_s: float = 60.0) -> PollSchedule:
        return PollSchedule(1.0, 4.0, deadline_s, sleep=self.sleep, clock=lambda: self.now)


def outcome(answer: dict[str, Any]) -> ProviderResult | str:
    if answer["status"] == "broken":
        raise ProviderTransientError("the task failed in a way a new task might not")
    return DONE if answer["status"] == "done" else str(answer["status"])


async def test_failed_polls_are_polled_again_and_a_server_asking_for_more_time_gets_it() -> None:
    task = Task(
        ProviderTransientError("503"),
        ThrottledError("429", retry_after=9.0),
        {"status": "running"},
        {"status": "done"},
    )
    result = await task.schedule().until_final(task.poll, outcome, task="t", handle="h")
    assert result is DONE
    assert task.sleeps == [1.0, 9.0, 4.0]


async def test_an_error_of_the_ended_task_is_not_polled_again() -> None:
    task = Task({"status": "broken"})
    with pytest.raises(ProviderTransientError) as caught:
        await task.schedule().until_final(task.poll, outcome, task="t", handle="h")
    assert not isinstance(caught.value, TaskDeadlineError)
    assert (task.polls, task.sleeps) == (1, [])


async def test_the_deadline_ends_the_wait_with_the_handle() -> None:
    task = Task({"status": "queued"})
    with pytest.raises(TaskDeadlineError) as caught:
        await task.schedule(deadline_s=6.0).until_final(
            task.poll, outcome, task="t-9", handle="t-9|x"
        )
    assert caught.value.task_id == "t-9|x"
    assert "task t-9 had not ended after 6 s (status queued)" in caught.value.message
    assert task.sleeps == [1.0, 2.0, 3.0]  # the last sleep ends at the deadline


@pytest.mark.parametrize(("interval", "cap", "deadline"), [(0, 1, 1), (2, 1, 1), (1, 1, 0)])
def test_a_schedule_that_cannot_work_is_refused(
    interval: float, cap: float, deadline: float
) -> None:
    with pytest.raises(ValueError, match="poll_interval_s"):
        PollSchedule(interval, cap, deadline)
