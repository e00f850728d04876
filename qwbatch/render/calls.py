"""Sending one request's provider call, and retrying it only where that cannot bill twice.

:class:`Caller` owns the paid step of a render: the limiter slot, the sync call or the async
task (submitted, then polled; a task id the provider accepted is polled again, never
resubmitted), the retry loop, and the accounting of *ambiguous* calls (sent, answer lost: they
may have been billed). Throttling, 5xx and transport errors before the request landed are
retried with backoff and jitter (:class:`~qwbatch.render.retries.RetryPolicy`); an ambiguous
call is retried at most ``Settings.ambiguous_retries`` times and its possible spend counted
apart; permanent errors and moderation end the request at once.

Every call is journaled before it is sent, every task id right after the provider accepts it,
every answer before its downloads. An async submission whose answer was lost is looked for
(``finder``, :mod:`qwbatch.render.recovery`) before anything is paid again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from qwbatch.core.costs import PriceTable
from qwbatch.core.errors import (
    AmbiguousError,
    BudgetExceededError,
    PermanentError,
    ProviderAmbiguousError,
    ProviderTransientError,
    ProviderUnavailableError,
    QwBatchError,
    TaskDeadlineError,
    ThrottledError,
    TransientError,
)
from qwbatch.core.model_table import ModelSpec
from qwbatch.core.settings import Settings
from qwbatch.core.stop import StopSignal
from qwbatch.core.types import ProviderResult, RenderRequest
from qwbatch.limits import Limiter, LimiterRegistry
from qwbatch.providers.base import Provider
from qwbatch.render.breaker import Breaker
from qwbatch.render.journal import Journal
from qwbatch.render.ledger import Ledger, Totals
from qwbatch.render.recovery import ABSENT, KNOWN_TASKS, Absent, TaskFinder
from qwbatch.render.retries import RetryPolicy, provider_retries

#: ``(uri, sha256 of its original bytes) -> what is sent`` for one edit input
#: ("data:image/png;base64,…"); see ``qwbatch.inputs.staging.StagedInputs``.
InputLoader = Callable[[str, str], Awaitable[str]]


class Caller:
    """Sends requests' provider calls and retries them; one per engine."""

    def __init__(
        self,
        *,
        provider: Provider,
        settings: Settings,
        prices: PriceTable,
        limiters: LimiterRegistry,
        journal: Journal,
        totals: Totals,
        finder: TaskFinder | None = None,
        input_loader: InputLoader | None = None,
        breaker: Breaker | None = None,
        stop: StopSignal | None = None,
    ) -> None:
        self.provider = provider
        self.settings = settings
        self.prices = prices
        self.limiters = limiters
        self.journal = journal
        self.totals = totals
        self.finder = finder
        self.input_loader = input_loader
        #: Stops calling a provider that refuses the account or is gone (render.breaker);
        #: the failure that opens it sets ``stop``, ending the run as Ctrl-C would.
        self.breaker = breaker if breaker is not None else Breaker()
        self.stop = stop if stop is not None else StopSignal()
        #: Waits and stops for provider-call retries (full jitter, caps, time per request).
        self.retry_policy = RetryPolicy.from_settings(settings)

    def limiter(self, spec: ModelSpec) -> Limiter:
        """The model's limiter: shared by every shard in the process (and, with a Prefect
        server, by every worker of the account); limits from :func:`qwbatch.limits.limit_spec`."""
        return self.limiters.for_model(spec, self.settings)

    def resume(
        self, request: RenderRequest, spec: ModelSpec, ledger: Ledger
    ) -> ProviderResult | None:
        """Carry what the journal knows of earlier attempts into this one; the provider's
        answer when one was journaled but not harvested (billed then: harvest it)."""
        state = self.journal.state
        key = request.request_key
        ledger.attempts = state.calls(key)
        ledger.task_id = state.known_task(key)
        ledger.orphan_since = state.orphan_since(key)
        prior = state.prior_ambiguous(key)
        if prior:
            # Lost answers of earlier attempts (a crash, or a drop journaled before it):
            # possible spend this run reports, and part of the ambiguous-retry budget.
            ledger.ambiguous = prior
            self._count_ambiguous(request, spec, ledger, prior)
            cut = state.get(key).unanswered
            if cut is not None and cut.endpoint == "sync":
                self.journal.ambiguous(request)  # the crash's cut, recorded as what it is
        if ledger.task_id is not None:
            KNOWN_TASKS.add(ledger.task_id)
        return state.answer(key)

    async def send(self, request: RenderRequest, spec: ModelSpec, ledger: Ledger) -> ProviderResult:
        """The paid call, retried only where retrying cannot bill twice (or within budget)."""
        limiter = self.limiter(spec)
        use_task = spec.task_only or (
            spec.async_endpoint and self.settings.prefer_async and request.mode == "generate"
        )
        retry_budget = self.settings.ambiguous_retries
        sent: list[str] = []
        if request.input_images:
            if self.input_loader is None:
                raise PermanentError("edit inputs given but no input loader configured")
            pairs = zip(request.input_images, request.input_sha256, strict=True)
            sent = list(await asyncio.gather(*(self.input_loader(u, s) for u, s in pairs)))
        if ledger.task_id is None and ledger.orphan_since is not None:
            # A resume: an async submission went out but its task id never reached the journal.
            found = await self._find_task(request, ledger, ledger.orphan_since, prove_absent=True)
            if isinstance(found, ProviderResult):
                self._answered(request, ledger, found)
                return found
            if found is ABSENT:
                # The listing proves it created no task: unbilled, sent again, not counted.
                self.journal.absent(request)
            else:
                ledger.ambiguous += 1
                self._count_ambiguous(request, spec, ledger)
                self.journal.ambiguous(request)  # so later resumes count it once, as ambiguous
        if ledger.task_id is None and ledger.ambiguous > retry_budget:
            raise ProviderAmbiguousError(
                f"{ledger.ambiguous} calls may have been billed without an answer (crash or lost "
                f"connection); not sent again (QWBATCH_AMBIGUOUS_RETRIES={retry_budget})"
            )

        # The request's time budget starts at its first send, again after each 429.
        first_sent: float | None = None
        tries = throttled = 0

        def retryable(exc: Exception) -> bool | float:
            """Whether to retry, as the wait (full jitter, Retry-After a floor): render.retries.

            A 429 is the limiter's business, not the row's: retried while the run lives, with
            no attempt cap and no time budget, after ``Retry-After`` when the server gave one
            (the limiter then paces the send)."""
            if isinstance(exc, ThrottledError):
                return exc.retry_after or 0.0
            if isinstance(exc, AmbiguousError):
                if ledger.ambiguous > retry_budget:
                    return False
            elif not isinstance(exc, TransientError):
                return False
            elapsed = time.monotonic() - (first_sent or time.monotonic())
            retry_after = exc.retry_after if isinstance(exc, ProviderTransientError) else None
            wait = self.retry_policy.next_wait(tries - throttled, elapsed, retry_after)
            return False if wait is None else wait

        async for attempt in provider_retries(self.settings, retryable, attempts=None):
            tries += 1
            with attempt:
                if ledger.task_id is not None:
                    # The provider accepted a task: poll it again, never resubmit.
                    try:
                        result = await self._wait_task(ledger)
                    except QwBatchError as exc:
                        self._account_wide(exc)
                        raise
                    self._answered(request, ledger, result)
                    return result
                ledger.attempts += 1
                try:
                    async with self.breaker.probe(), limiter.slot():
                        first_sent = first_sent or time.monotonic()
                        if use_task:
                            result = await self._submit_and_wait(request, ledger, sent)
                        else:
                            with ledger.guarded():
                                await self.journal.intent(request, "sync", ledger.attempts)
                                result = await self.provider.generate(request, sent)
                except AmbiguousError:
                    ledger.ambiguous += 1
                    self._count_ambiguous(request, spec, ledger)
                    self.journal.ambiguous(request)
                    raise
                except ProviderUnavailableError:
                    ledger.attempts -= 1  # the breaker was open: nothing was sent
                    raise
                except QwBatchError as exc:
                    self.journal.failed(request)  # answered with an error: nothing billed
                    if isinstance(exc, ThrottledError):
                        limiter.on_throttle(exc.retry_after)
                        throttled += 1
                        first_sent = None
                    elif isinstance(exc, BudgetExceededError):
                        ledger.attempts -= 1  # refused before it was sent: not a provider call
                    self._account_wide(exc)
                    raise
                limiter.on_success()
                self.breaker.succeeded()
                self._answered(request, ledger, result)
                return result
        raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover

    def _account_wide(self, exc: QwBatchError) -> None:
        """An error the whole account or endpoint gets: count it on the breaker, and leave
        the row for the next run (ProviderUnavailableError) unless it may pass on a retry.
        The failure that opens the breaker stops the run, as Ctrl-C would, saying why."""
        if not getattr(exc, "account_wide", False):
            return
        if self.breaker.failed(exc):
            self.stop.set(
                f"the provider, which refused or could not be reached on {self.breaker.probes} "
                f"calls in a row ({self.breaker.reason})"
            )
            raise ProviderUnavailableError(f"stopped calling the provider: {exc.message}") from exc
        if not isinstance(exc, TransientError):
            raise ProviderUnavailableError(f"refused account-wide: {exc.message}") from exc

    async def _submit_and_wait(
        self, request: RenderRequest, ledger: Ledger, sent: Sequence[str] = ()
    ) -> ProviderResult:
        """Create an async task (journaled before and after) and wait for it to end."""
        with ledger.guarded():
            await self.journal.intent(request, "async", ledger.attempts)
            sent_at = time.time()
            try:
                # Edit inputs only when there are some: generation keeps the one-argument call.
                submit = self.provider.submit_task
                ledger.task_id = await (submit(request, sent) if sent else submit(request))
            except AmbiguousError:
                # The task may exist: find it rather than pay for a second one.
                found = await self._find_task(request, ledger, sent_at)
                if not isinstance(found, ProviderResult):
                    raise
                return found
            KNOWN_TASKS.add(ledger.task_id)
            self.breaker.succeeded()  # the account's call was accepted
            await self.journal.task(request, ledger.task_id)
        return await self._wait_task(ledger)

    async def _wait_task(self, ledger: Ledger) -> ProviderResult:
        """Poll the request's task; a task that ended in failure is forgotten (retry
        resubmits), one still running at the deadline is polled again."""
        assert ledger.task_id is not None
        try:
            return await self.provider.wait_task(ledger.task_id)
        except TaskDeadlineError:
            raise
        except QwBatchError:
            ledger.task_id = None
            raise

    async def _find_task(
        self, request: RenderRequest, ledger: Ledger, sent_at: float, *, prove_absent: bool = False
    ) -> ProviderResult | Absent | None:
        """Look for the task a lost submission created; journal it and return its result.
        ``ABSENT`` when ``prove_absent`` and the provider's listing proves there is none."""
        if self.finder is None:
            return None
        search = await self.finder.search(request, sent_at, prove_absent=prove_absent)
        if search.found is None:
            return ABSENT if search.absent else None
        task_id, result = search.found
        ledger.task_id = task_id
        self.totals.recovered(ledger)
        await self.journal.task(request, task_id, recovered=True)
        return result

    def _answered(self, request: RenderRequest, ledger: Ledger, result: ProviderResult) -> None:
        """The provider answered: count what it billed, and journal the answer before the
        downloads, so a crash from here on harvests these URLs instead of paying again."""
        self.totals.billed(ledger, result.billed_images)
        self.journal.answer(request, result)

    def _count_ambiguous(
        self, request: RenderRequest, spec: ModelSpec, ledger: Ledger, calls: int = 1
    ) -> None:
        del spec  # priced by the request: size and inputs count for some providers
        price = self.prices.catalog_request_price(request)
        self.totals.ambiguous(ledger, request.n, price, calls)
