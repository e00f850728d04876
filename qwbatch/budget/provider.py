"""The provider wrapper that spends only what the run's budget guard allows.

A call whose outcome is unknown (``AmbiguousError``, a cancelled call, an async task that
never answered) keeps its whole reservation: it may have been billed, so its money is treated
as gone. Hence billed spend never passes the budget, whatever the retries, as long as the
provider bills at most ``n`` images per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qwbatch.budget.hold import BudgetGuard, Hold
from qwbatch.core.costs import ZERO, PriceTable, format_money
from qwbatch.core.errors import (
    AmbiguousError,
    BudgetExceededError,
    QwBatchError,
    ResultExpiredError,
    TaskDeadlineError,
)
from qwbatch.core.types import ProviderResult, RenderRequest
from qwbatch.providers.base import Provider


def _may_have_billed(exc: BaseException) -> bool:
    """Whether a failed call may still have been billed (then its hold is kept)."""
    if isinstance(exc, AmbiguousError):
        return True
    # Our other errors say the provider did not bill; anything else (cancellation, a bug)
    # leaves the outcome unknown.
    return not isinstance(exc, QwBatchError)


class BudgetedProvider:
    """A :class:`~qwbatch.providers.base.Provider` that spends only what the guard allows.

    Wraps the real provider: ``generate`` and ``submit_task`` reserve ``n`` × unit price
    first and raise :class:`BudgetExceededError` (recorded as ``skipped_budget``) when it
    does not fit; ``generate`` and ``wait_task`` settle on the usage the provider reports.
    A task this provider did not submit (harvested on resume) is settled by whoever
    reserved it. Everything else is passed through.
    """

    def __init__(self, provider: Provider, guard: BudgetGuard, prices: PriceTable) -> None:
        self._provider = provider
        self._guard = guard
        self._prices = prices
        #: Task id → (hold, model) for submitted tasks whose billing is still unknown.
        self._tasks: dict[str, tuple[Hold, RenderRequest]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._provider, name)

    async def _reserve(self, request: RenderRequest) -> Hold:
        amount = self._prices.request_cost(request)
        hold = await self._guard.reserve(amount)
        if hold is None:
            raise BudgetExceededError(
                f"not sent: {request.n} image(s) of {request.model} "
                f"({format_money(amount, self._prices.currency)}) would pass the run's budget"
            )
        return hold

    async def generate(self, request: RenderRequest, images: Sequence[str] = ()) -> ProviderResult:
        hold = await self._reserve(request)
        try:
            result = await self._provider.generate(request, images)
        except BaseException as exc:
            await self._guard.settle(hold, hold.amount if _may_have_billed(exc) else ZERO)
            raise
        billed = self._prices.billed_cost(request, result.billed_images, result.cost)
        await self._guard.settle(hold, billed)
        return result

    async def submit_task(self, request: RenderRequest, images: Sequence[str] = ()) -> str:
        hold = await self._reserve(request)
        try:
            submit = self._provider.submit_task
            task_id = await (submit(request, images) if images else submit(request))
        except BaseException as exc:
            await self._guard.settle(hold, hold.amount if _may_have_billed(exc) else ZERO)
            raise
        self._tasks[task_id] = (hold, request)
        return task_id

    async def wait_task(self, task_id: str) -> ProviderResult:
        try:
            result = await self._provider.wait_task(task_id)
        except QwBatchError as exc:
            # Polling retries its own failures, so an error means the task ended without
            # images (FAILED, CANCELED: nothing billed), unless the task may yet bill: it
            # outlived the deadline, its id expired, or the answer was lost. Then the hold stays.
            if not isinstance(exc, TaskDeadlineError | ResultExpiredError | AmbiguousError):
                pending = self._tasks.pop(task_id, None)
                if pending is not None:
                    await self._guard.settle(pending[0], ZERO)
            raise
        pending = self._tasks.pop(task_id, None)
        if pending is not None:
            hold, held_for = pending
            billed = self._prices.billed_cost(held_for, result.billed_images, result.cost)
            await self._guard.settle(hold, billed)
        return result

    async def download(self, url: str) -> bytes:
        return await self._provider.download(url)
