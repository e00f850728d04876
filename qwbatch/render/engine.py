"""The shard executor: requests in, stored images and catalog records out. No Prefect here.

Inside a shard, requests run concurrently on one asyncio loop. Each goes through::

    stored already? → limiter slot → provider call (sync, or async task + poll)
      → download each result URL → verify (Pillow) → store.put(content-addressed key)
      → catalog records

Retries are classified (``qwbatch.core.errors``): throttling, 5xx and transport errors before the
request landed are retried with backoff and jitter; an *ambiguous* failure (the request may
have been billed) is retried at most ``Settings.ambiguous_retries`` times and its possible
spend is counted apart; permanent errors and moderation are recorded at once. A failure after
the provider succeeded retries the download and the upload, never the generation; a store
that is down is retried for ``Settings.store_retry_s`` while the image bytes wait in memory.

Three collaborators make a run survive crashes and stops (each optional, each a hook):

- ``journal`` (:mod:`qwbatch.render.journal`): every call is journaled before it is sent, every
  async task id right after the provider accepts it, every answer before its downloads,
  every request's records when it ends. Built from a replayed journal, the engine restores
  finished requests, harvests journaled answers, polls known task ids instead of
  resubmitting, counts calls a crash cut off as ambiguous, and does first what is paid for.
- ``finder`` (:mod:`qwbatch.render.recovery`): looks for the task behind an async submission whose
  answer was lost (dropped connection, or a crash before the task id was journaled); after a
  crash, a submission its listing proves never accepted is sent again, not counted as billed.
- ``stop`` (:mod:`qwbatch.core.stop`): once set, no new request starts; calls under way and
  harvests finish; requests that are only waiting are abandoned to the journal and counted
  as ``left``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import stamina

from qwbatch.budget.policy import BudgetedProvider, BudgetGuard
from qwbatch.catalog import table as catalog
from qwbatch.core import images
from qwbatch.core.costs import PriceTable
from qwbatch.core.errors import (
    AmbiguousError,
    BudgetExceededError,
    ImageError,
    JournalError,
    ModerationError,
    PermanentError,
    ProviderAmbiguousError,
    ProviderTransientError,
    QwBatchError,
    ResultExpiredError,
    StorageTransientError,
    TaskDeadlineError,
    ThrottledError,
    TransientError,
)
from qwbatch.core.model_table import ModelSpec, ModelTable
from qwbatch.core.settings import Settings
from qwbatch.core.stop import Guard, StopSignal, cancel_when_stopped
from qwbatch.core.types import CatalogRecord, PlanItem, ProviderResult, RenderRequest, Status
from qwbatch.core.uris import recorded_uri
from qwbatch.limits import LIMITERS, Limiter, LimiterRegistry
from qwbatch.plan import decode_shard
from qwbatch.providers.base import Provider
from qwbatch.render.journal import Finished, Journal
from qwbatch.render.recovery import ABSENT, KNOWN_TASKS, Absent, TaskFinder
from qwbatch.render.retries import RetryPolicy
from qwbatch.storage import thumbs
from qwbatch.storage.layout import output_key
from qwbatch.storage.metadata import image_metadata, request_doc_key
from qwbatch.storage.stores import ObjectInfo, ObjectStore

T = TypeVar("T")

log = logging.getLogger(__name__)

#: ``(uri, sha256 of its original bytes) -> what is sent`` for one edit input
#: ("data:image/png;base64,…"); see ``qwbatch.inputs.staging.StagedInputs``.
InputLoader = Callable[[str, str], Awaitable[str]]
#: Told each request's records as soon as the request ends (progress displays). It runs on
#: the engine's event loop thread: keep it quick, thread-safe, and never raising.
RecordsCallback = Callable[[Sequence[CatalogRecord]], None]


@dataclass(slots=True)
class ShardResult:
    """A shard's small summary; the records themselves go to the catalog part."""

    shard_key: str
    part_uri: str | None = None
    statuses: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    images: int = 0
    billed_images: int = 0
    cost: float = 0.0
    #: Images that ambiguous calls may have billed without our seeing them.
    possible_extra_images: int = 0
    possible_extra_cost: float = 0.0
    attempts: int = 0
    wall_s: float = 0.0
    #: Calls whose answer was lost after they were sent (each may have been billed).
    ambiguous_calls: int = 0
    #: Async tasks found again after their creation answer was lost (harvested, not re-paid).
    recovered_tasks: int = 0
    #: Requests not finished because the run was stopped (journaled; a resume does them).
    left: int = 0


@dataclass(slots=True)
class _Call:
    """Bookkeeping for one request across its attempts (and across resumes, via the journal)."""

    attempts: int = 0
    ambiguous: int = 0
    task_id: str | None = None
    #: When an async submission whose answer the journal never saw was sent (a resume).
    orphan_since: float | None = None
    billed: int = 0
    extra_images: int = 0
    extra_cost: float = 0.0
    recovered: int = 0
    #: Held while the request is in a step a stop must not cut: a call on the wire, a harvest.
    guarded: Guard = field(default_factory=Guard)


class Engine:
    """Runs requests against a provider and a store. Build one per shard (or per process)."""

    def __init__(
        self,
        *,
        provider: Provider,
        store: ObjectStore,
        table: ModelTable,
        settings: Settings,
        run_id: str,
        input_loader: InputLoader | None = None,
        limiters: LimiterRegistry = LIMITERS,
        concurrency: int = 32,
        on_records: RecordsCallback | None = None,
        prices: PriceTable | None = None,
        budget: BudgetGuard | None = None,
        journal: Journal | None = None,
        finder: TaskFinder | None = None,
        stop: StopSignal | None = None,
    ) -> None:
        #: Unit prices for the catalog's unit_price and cost (qwbatch.core.costs).
        self.prices = prices or PriceTable.load(settings, table)
        #: With a budget, every paid call reserves its cost first (qwbatch.budget.policy).
        self.provider = (
            provider if budget is None else BudgetedProvider(provider, budget, self.prices)
        )
        self.store = store
        self.table = table
        self.settings = settings
        self.run_id = run_id
        self.input_loader = input_loader
        self.limiters = limiters
        self.concurrency = concurrency
        self.on_records = on_records
        self.region = settings.region
        self.currency = settings.currency()
        #: Images the provider billed (its usage counts), and images that ambiguous calls
        #: may have billed without our seeing them; summed over everything this engine ran.
        self.billed_images = 0
        self.possible_extra_images = 0
        self.possible_extra_cost = 0.0
        self.ambiguous_calls = 0
        self.recovered_tasks = 0
        self.left = 0
        self.journal = journal if journal is not None else Journal()
        self.finder = finder
        if finder is None and settings.recover_tasks:
            self.finder = TaskFinder(provider, journal_tasks=self.journal.known_tasks)
        self.stop = stop if stop is not None else StopSignal()
        #: Waits and stops for provider-call retries (full jitter, caps, time per request).
        self.retry_policy = RetryPolicy.from_settings(settings)

    # -- limits ---------------------------------------------------------------------------

    def limiter(self, spec: ModelSpec) -> Limiter:
        """The model's limiter: shared by every shard in the process (and, with a Prefect
        server, by every worker of the account); limits from :func:`qwbatch.limits.limit_spec`."""
        return self.limiters.for_model(spec, self.settings)

    def _retry(
        self, on: Callable[[Exception], bool | float], *, attempts: int | None = None
    ) -> stamina._core._RetryContextIterator:
        return stamina.retry_context(
            on=on,
            attempts=self.settings.max_attempts if attempts is None else attempts,
            timeout=None,
            wait_initial=self.settings.backoff_base_s,
            wait_max=self.settings.backoff_max_s,
            wait_jitter=self.settings.backoff_base_s,
        )

    # -- one shard ------------------------------------------------------------------------

    async def run_items(self, items: Sequence[PlanItem]) -> list[CatalogRecord]:
        """Render every item; records for all of them (and their folded duplicates).

        Requests the journal holds an answer or a task id for go first: they are paid for,
        and their result URLs are the first to expire. Once ``stop`` is set, items not yet
        started are left, and started ones that are only waiting are abandoned (see
        :mod:`qwbatch.core.stop`).
        """
        state = self.journal.state
        ordered = sorted(items, key=lambda item: state.priority(item.request.request_key))
        gate = asyncio.Semaphore(self.concurrency)

        async def one(item: PlanItem, call: _Call) -> list[CatalogRecord]:
            try:
                async with gate:
                    if not self.stop.is_set():
                        records = await self._render(item, call)
                        if self.on_records is not None:
                            self.on_records(records)
                        return records
            except asyncio.CancelledError:
                if not self.stop.is_set():
                    raise  # not our stop: someone cancelled the shard itself
            self.left += 1
            return []

        guards: dict[asyncio.Task[list[CatalogRecord]], Guard] = {}
        for item in ordered:
            call = _Call()
            guards[asyncio.create_task(one(item, call))] = call.guarded
        watcher = asyncio.create_task(cancel_when_stopped(self.stop, guards))
        try:
            groups = await asyncio.gather(*guards)
        finally:
            watcher.cancel()
            await self.journal.close()
        return [record for group in groups for record in group]

    async def render(self, item: PlanItem) -> list[CatalogRecord]:
        """Render one request; its records, with folded duplicates recorded as deduplicated."""
        return await self._render(item, _Call())

    async def _render(self, item: PlanItem, call: _Call) -> list[CatalogRecord]:
        request = item.request
        key = request.request_key
        finished = self.journal.state.finished(key)
        if finished is not None:
            return self._restore(finished)
        spec = self.table.get(request.model)
        unit_price = self.prices.catalog_price(request.model)
        started = time.time()
        answered = self._resume_call(request, spec, call)
        try:
            records = await self._stored_records(request, call, unit_price, started)
            if records is None:
                if answered is not None:
                    self._billed(call, answered)  # paid for before the crash, not harvested
                    result = answered
                else:
                    result = await self._call_provider(request, spec, call)
                with call.guarded():
                    records = await self._harvest(request, result, call, unit_price, started)
        except JournalError:
            raise
        except QwBatchError as exc:
            records = [self._failure(request, exc, call, unit_price, started)]
        # Ambiguous attempts may have been billed without our seeing it: possible spend.
        records[0].possible_cost = call.ambiguous * request.n * unit_price
        for alias in item.aliases:
            folded = self._alias_records(records, alias.row_id, dict(alias.tags))
            for record in folded if alias.input_images else ():
                # The same input bytes, perhaps under other names: record the row's own.
                record.input_images = [recorded_uri(uri) for uri in alias.input_images]
                record.input_notes = list(alias.input_notes)
            records.extend(folded)
        self.journal.done(key, self._finished(records, call))
        return records

    def _resume_call(
        self, request: RenderRequest, spec: ModelSpec, call: _Call
    ) -> ProviderResult | None:
        """Carry what the journal knows of earlier attempts into this one; the provider's
        answer when one was journaled but not harvested (billed then: harvest it)."""
        state = self.journal.state
        key = request.request_key
        call.attempts = state.calls(key)
        call.task_id = state.known_task(key)
        call.orphan_since = state.orphan_since(key)
        prior = state.prior_ambiguous(key)
        if prior:
            # Lost answers of earlier attempts (a crash, or a drop journaled before it):
            # possible spend this run reports, and part of the ambiguous-retry budget.
            call.ambiguous = prior
            self._count_ambiguous(request, spec, call, prior)
            cut = state.get(key).unanswered
            if cut is not None and cut.endpoint == "sync":
                self.journal.ambiguous(request)  # the crash's cut, recorded as what it is
        if call.task_id is not None:
            KNOWN_TASKS.add(call.task_id)
        return state.answer(key)

    def _restore(self, finished: Finished) -> list[CatalogRecord]:
        """A request the journal says ended: its records and counters, nothing re-sent."""
        self.billed_images += finished.billed_images
        self.possible_extra_images += finished.possible_extra_images
        self.possible_extra_cost += finished.possible_extra_cost
        self.ambiguous_calls += finished.ambiguous_calls
        self.recovered_tasks += finished.recovered_tasks
        return finished.records

    @staticmethod
    def _finished(records: list[CatalogRecord], call: _Call) -> Finished:
        return Finished(
            records=records,
            billed_images=call.billed,
            possible_extra_images=call.extra_images,
            possible_extra_cost=call.extra_cost,
            ambiguous_calls=call.ambiguous,
            recovered_tasks=call.recovered,
        )

    def _count_ambiguous(
        self, request: RenderRequest, spec: ModelSpec, call: _Call, calls: int = 1
    ) -> None:
        extra_cost = calls * request.n * self.prices.catalog_price(spec.name)
        self.ambiguous_calls += calls
        self.possible_extra_images += calls * request.n
        self.possible_extra_cost += extra_cost
        call.extra_images += calls * request.n
        call.extra_cost += extra_cost

    def _answered(self, request: RenderRequest, call: _Call, result: ProviderResult) -> None:
        """The provider answered: count what it billed, and journal the answer before the
        downloads, so a crash from here on harvests these URLs instead of paying again."""
        self._billed(call, result)
        self.journal.answer(request, result)

    def _billed(self, call: _Call, result: ProviderResult) -> None:
        self.billed_images += result.billed_images
        call.billed += result.billed_images

    # -- steps ----------------------------------------------------------------------------

    async def _store_call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A store call, retried while the store is unreachable (up to ``store_retry_s``).

        The first attempt runs outside stamina, whose retry context costs the event loop
        ~50 µs to build, more than a local store call; a failed one is retried at once, then
        with backoff."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except StorageTransientError:
            pass
        async for attempt in store_retries(self.settings):
            with attempt:
                return await asyncio.to_thread(fn, *args, **kwargs)
        raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover

    async def _stored_records(
        self, request: RenderRequest, call: _Call, unit_price: float, started: float
    ) -> list[CatalogRecord] | None:
        """Records for outputs already in the store (a crash after upload); None if absent.

        An output this run stored (its ``run-id``) for a request the journal saw it send is
        recorded as succeeded at its price: this run paid for it before a crash kept it from
        the catalog. Others are deduplicated. An output without its metadata (a crash
        between a local file and its sidecar) is verified and its metadata written again.
        """
        sent_before = self.journal.state.calls(request.request_key) > 0
        infos = []
        for index in range(request.n):
            key = output_key(request.request_key, index)
            info = await self._store_call(self.store.head, key)
            if info is not None and "sha256" not in info.metadata:
                info = await self._restore_metadata(request, index, key, unit_price)
            if info is None:
                return None
            infos.append(info)
        records = []
        for index, info in enumerate(infos):
            meta = info.metadata
            ours = sent_before and meta.get("run-id") == self.run_id
            if ours:
                self.billed_images += 1
                call.billed += 1
            records.append(
                self._record(
                    request,
                    "succeeded" if ours else "deduplicated",
                    started,
                    call=call if ours else None,
                    image_index=index,
                    output_uri=self.store.uri(output_key(request.request_key, index)),
                    sha256=meta.get("sha256"),
                    bytes=info.size,
                    width=_int_or_none(meta.get("width")),
                    height=_int_or_none(meta.get("height")),
                    unit_price=unit_price if ours else 0.0,
                    cost=unit_price if ours else 0.0,
                )
            )
        return records

    async def _restore_metadata(
        self, request: RenderRequest, index: int, key: str, unit_price: float
    ) -> ObjectInfo | None:
        """Verify an output that lost its metadata and write it again with its metadata (as
        this run's: only a crash of the run that stored it leaves one so); None if the bytes
        are not a valid image, which the harvest then replaces."""
        data = await self._store_call(self.store.get, key)
        try:
            info = await asyncio.to_thread(images.verify_image, data)
        except ImageError:
            return None
        metadata, _ = image_metadata(
            request,
            index=index,
            sha256=info.sha256,
            width=info.width,
            height=info.height,
            run_id=self.run_id,
            unit_price=unit_price,
            currency=self.currency,
            task_id=None,
            request_id=None,
            created_at=time.time(),
        )
        await self._store_call(
            self.store.put, key, data, content_type=info.content_type, metadata=metadata
        )
        return await self._store_call(self.store.head, key)

    async def _call_provider(
        self, request: RenderRequest, spec: ModelSpec, call: _Call
    ) -> ProviderResult:
        """The paid call, retried only where retrying cannot bill twice (or within budget)."""
        limiter = self.limiter(spec)
        use_task = spec.async_endpoint and self.settings.prefer_async and request.mode == "generate"
        retry_budget = self.settings.ambiguous_retries
        sent: list[str] = []
        if request.input_images:
            if self.input_loader is None:
                raise PermanentError("edit inputs given but no input loader configured")
            pairs = zip(request.input_images, request.input_sha256, strict=True)
            sent = list(await asyncio.gather(*(self.input_loader(u, s) for u, s in pairs)))
        if call.task_id is None and call.orphan_since is not None:
            # A resume: an async submission went out but its task id never reached the journal.
            found = await self._find_task(request, call, call.orphan_since, prove_absent=True)
            if isinstance(found, ProviderResult):
                self._answered(request, call, found)
                return found
            if found is ABSENT:
                # The listing proves it created no task: unbilled, sent again, not counted.
                self.journal.absent(request)
            else:
                call.ambiguous += 1
                self._count_ambiguous(request, spec, call)
                self.journal.ambiguous(request)  # so later resumes count it once, as ambiguous
        if call.task_id is None and call.ambiguous > retry_budget:
            raise ProviderAmbiguousError(
                f"{call.ambiguous} calls may have been billed without an answer (crash or lost "
                f"connection); not sent again (QWBATCH_AMBIGUOUS_RETRIES={retry_budget})"
            )

        first_sent: float | None = None  # the request's time budget starts at its first send
        tries = 0

        def retryable(exc: Exception) -> bool | float:
            """Whether to retry, as the wait (full jitter, Retry-After a floor): render.retries."""
            if isinstance(exc, AmbiguousError):
                if call.ambiguous > retry_budget:
                    return False
            elif not isinstance(exc, TransientError):
                return False
            elapsed = time.monotonic() - (first_sent or time.monotonic())
            retry_after = exc.retry_after if isinstance(exc, ProviderTransientError) else None
            wait = self.retry_policy.next_wait(tries, elapsed, retry_after)
            return False if wait is None else wait

        async for attempt in self._retry(retryable):
            tries += 1
            with attempt:
                if call.task_id is not None:
                    # The provider accepted a task: poll it again, never resubmit.
                    result = await self._wait_task(call)
                    self._answered(request, call, result)
                    return result
                call.attempts += 1
                try:
                    async with limiter.slot():
                        first_sent = first_sent or time.monotonic()
                        if use_task:
                            result = await self._submit_and_wait(request, call)
                        else:
                            with call.guarded():
                                await self.journal.intent(request, "sync", call.attempts)
                                result = await self.provider.generate(request, sent)
                except AmbiguousError:
                    call.ambiguous += 1
                    self._count_ambiguous(request, spec, call)
                    self.journal.ambiguous(request)
                    raise
                except QwBatchError as exc:
                    self.journal.failed(request)  # answered with an error: nothing billed
                    if isinstance(exc, ThrottledError):
                        limiter.on_throttle(exc.retry_after)
                    elif isinstance(exc, BudgetExceededError):
                        call.attempts -= 1  # refused before it was sent: not a provider call
                    raise
                limiter.on_success()
                self._answered(request, call, result)
                return result
        raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover

    async def _submit_and_wait(self, request: RenderRequest, call: _Call) -> ProviderResult:
        """Create an async task (journaled before and after) and wait for it to end."""
        with call.guarded():
            await self.journal.intent(request, "async", call.attempts)
            sent_at = time.time()
            try:
                call.task_id = await self.provider.submit_task(request)
            except AmbiguousError:
                # The task may exist: find it rather than pay for a second one.
                found = await self._find_task(request, call, sent_at)
                if not isinstance(found, ProviderResult):
                    raise
                return found
            KNOWN_TASKS.add(call.task_id)
            await self.journal.task(request, call.task_id)
        return await self._wait_task(call)

    async def _wait_task(self, call: _Call) -> ProviderResult:
        """Poll the call's task; a task that ended in failure is forgotten (retry resubmits),
        one still running at the deadline is polled again."""
        assert call.task_id is not None
        try:
            return await self.provider.wait_task(call.task_id)
        except TaskDeadlineError:
            raise
        except QwBatchError:
            call.task_id = None
            raise

    async def _find_task(
        self, request: RenderRequest, call: _Call, sent_at: float, *, prove_absent: bool = False
    ) -> ProviderResult | Absent | None:
        """Look for the task a lost submission created; journal it and return its result.
        ``ABSENT`` when ``prove_absent`` and the provider's listing proves there is none."""
        if self.finder is None:
            return None
        search = await self.finder.search(request, sent_at, prove_absent=prove_absent)
        if search.found is None:
            return ABSENT if search.absent else None
        task_id, result = search.found
        call.task_id = task_id
        call.recovered += 1
        self.recovered_tasks += 1
        await self.journal.task(request, task_id, recovered=True)
        return result

    async def _harvest(
        self,
        request: RenderRequest,
        result: ProviderResult,
        call: _Call,
        unit_price: float,
        started: float,
    ) -> list[CatalogRecord]:
        """Download, verify and store each image; the generation is never repeated here."""
        records: list[CatalogRecord] = []
        for image in result.images:
            try:
                data, info, uri = await self._store_image(
                    request, image.url, image.index, result, unit_price
                )
            except QwBatchError as exc:
                status: Status = "expired" if isinstance(exc, ResultExpiredError) else "failed"
                records.append(
                    self._record(
                        request,
                        status,
                        started,
                        call=call,
                        result=result,
                        image_index=image.index,
                        error=exc,
                        unit_price=unit_price,
                        cost=unit_price,
                    )
                )
                continue
            records.append(
                self._record(
                    request,
                    "succeeded",
                    started,
                    call=call,
                    result=result,
                    image_index=image.index,
                    output_uri=uri,
                    sha256=info.sha256,
                    bytes=len(data),
                    width=info.width,
                    height=info.height,
                    unit_price=unit_price,
                    cost=unit_price,
                )
            )
        missing = request.n - len(result.images)
        if missing > 0:
            codes = "; ".join(f"{c}: {m}" for c, m in result.item_errors) or "not returned"
            records.append(
                self._record(
                    request,
                    "failed",
                    started,
                    call=call,
                    result=result,
                    error_code="PartialFailure",
                    error_message=f"{missing} of {request.n} images failed ({codes})",
                    unit_price=unit_price,
                )
            )
        # Billed images beyond those recorded (usage says more than we got) cost all the same.
        extra = result.billed_images - len(result.images)
        if extra > 0 and records:
            records[-1].cost += extra * unit_price
        return records

    async def _store_image(
        self,
        request: RenderRequest,
        url: str,
        index: int,
        result: ProviderResult,
        unit_price: float,
    ) -> tuple[bytes, images.ImageInfo, str]:
        """Fetch, verify and upload one image, retrying transient and corrupt downloads, and
        retrying the upload for as long as the store is unreachable (``store_retry_s``)."""

        key = output_key(request.request_key, index)

        async def fetch() -> tuple[bytes, _Checked]:
            data = await self.provider.download(url)
            # Decoding a 2048² output takes tens of ms: off the event loop, once for both the
            # verification and the thumbnail, in the same worker-thread hop as the writes
            # (a hop costs the event loop more than the small writes themselves).
            return data, await asyncio.to_thread(
                self._check_and_write, request, index, key, data, result, unit_price
            )

        def retryable(exc: Exception) -> bool:
            return isinstance(exc, TransientError | ImageError)

        # The first attempt outside stamina (see _store_call); the rest with its backoff.
        attempts = self.settings.max_attempts
        try:
            data, checked = await fetch()
        except (TransientError, ImageError):
            if attempts <= 1:
                raise
            async for attempt in self._retry(retryable, attempts=attempts - 1):
                with attempt:
                    data, checked = await fetch()
        if checked.written is None:  # the store did not answer: retry the writes alone
            checked.written = await self._store_call(
                self._write_output, request, index, key, data, checked.output, *checked.meta
            )
        info, uri = checked.written
        return data, info, uri

    def _check_and_write(
        self,
        request: RenderRequest,
        index: int,
        key: str,
        data: bytes,
        result: ProviderResult,
        unit_price: float,
    ) -> _Checked:
        """Verify a download (ImageError if it is not sound) and store it with its metadata,
        on a worker thread. ``written`` is None when the store failed transiently: the
        caller retries the writes, never the download."""
        checked = images.check_output(data)
        meta = image_metadata(
            request,
            index=index,
            sha256=checked.info.sha256,
            width=checked.info.width,
            height=checked.info.height,
            run_id=self.run_id,
            unit_price=unit_price,
            currency=self.currency,
            task_id=result.task_id,
            request_id=result.request_id,
            created_at=time.time(),
        )
        try:
            written = self._write_output(request, index, key, data, checked, *meta)
        except StorageTransientError:
            written = None
        return _Checked(checked, meta, written)

    def _write_output(
        self,
        request: RenderRequest,
        index: int,
        key: str,
        data: bytes,
        checked: images.CheckedOutput,
        metadata: dict[str, str],
        doc: bytes | None,
    ) -> tuple[images.ImageInfo, str]:
        """Store a verified output, its prompt document and its thumbnail (on a worker thread;
        idempotent, so a store outage retries it whole). The output's info and URI: those of
        the object already stored under its content-addressed key, if there is one."""
        info = checked.info
        if doc is not None:
            # The prompt did not fit the object metadata: it rides beside the images.
            self.store.put(
                request_doc_key(request.request_key),
                doc,
                content_type="application/json",
                if_none_match=True,
            )
        put = self.store.put(
            key, data, content_type=info.content_type, metadata=metadata, if_none_match=True
        )
        if checked.thumbnail is not None:
            thumbs.put_thumbnail(self.store, request.request_key, index, checked.thumbnail)
        else:
            log.warning("no thumbnail for %s image %d: Pillow could not make one", key, index)
        if not put.created:
            # Content-addressed: the object already there is the output of record, unless it
            # lost its metadata (a crash between a local file and its sidecar): then ours,
            # verified just now, replaces it whole.
            existing = self.store.head(key)
            if existing is None or not existing.metadata.get("sha256"):
                put = self.store.put(key, data, content_type=info.content_type, metadata=metadata)
            else:
                info = images.ImageInfo(
                    format=info.format,
                    width=_int_or_none(existing.metadata.get("width")) or 0,
                    height=_int_or_none(existing.metadata.get("height")) or 0,
                    sha256=existing.metadata["sha256"],
                    bytes=existing.size,
                )
        return info, put.uri

    # -- records --------------------------------------------------------------------------

    def _record(
        self,
        request: RenderRequest,
        status: Status,
        started: float,
        *,
        call: _Call | None = None,
        result: ProviderResult | None = None,
        error: QwBatchError | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
        image_index: int | None = None,
        output_uri: str | None = None,
        sha256: str | None = None,
        bytes: int | None = None,
        width: int | None = None,
        height: int | None = None,
        unit_price: float = 0.0,
        cost: float = 0.0,
    ) -> CatalogRecord:
        if error is not None:
            error_code = error_code or error.code
            error_message = error_message or error.message
        return CatalogRecord.for_request(
            request,
            run_id=self.run_id,
            row_id=request.row_id,
            status=status,
            tags=request.tags,
            image_index=image_index,
            error_code=error_code,
            error_message=error_message,
            attempts=call.attempts if call else 0,
            ambiguous_calls=call.ambiguous if call else 0,
            provider_request_id=result.request_id if result else getattr(error, "request_id", None),
            provider_task_id=(result.task_id if result else None)
            or (call.task_id if call else None),
            output_uri=output_uri,
            sha256=sha256,
            bytes=bytes,
            width=width,
            height=height,
            unit_price=unit_price,
            currency=self.currency,
            cost=cost,
            started_at=started,
            finished_at=time.time(),
        )

    def _failure(
        self,
        request: RenderRequest,
        exc: QwBatchError,
        call: _Call,
        unit_price: float,
        started: float,
    ) -> CatalogRecord:
        status: Status
        if isinstance(exc, ModerationError):
            status = "moderated"
        elif isinstance(exc, AmbiguousError):
            status = "ambiguous"
        elif isinstance(exc, ResultExpiredError):
            status = "expired"
        elif isinstance(exc, BudgetExceededError) and call.ambiguous:
            # The budget refused the retry of a lost answer: the first call may be billed.
            status = "ambiguous"
            exc = AmbiguousError(f"the answer was lost (it may be billed); retry: {exc.message}")
        elif isinstance(exc, BudgetExceededError):
            status = "skipped_budget"
        else:
            status = "failed"
        del unit_price  # failed requests are not billed; ambiguous spend is counted apart
        return self._record(request, status, started, call=call, error=exc)

    def _alias_records(
        self, records: Sequence[CatalogRecord], row_id: str, tags: dict[str, str]
    ) -> list[CatalogRecord]:
        """A folded duplicate row: the same outputs, recorded under its own id, at no cost."""
        out = []
        for record in records:
            copy = CatalogRecord(**{name: getattr(record, name) for name in record.__slots__})
            copy.row_id = row_id
            copy.tags = tags
            copy.cost = 0.0
            copy.possible_cost = 0.0
            copy.unit_price = 0.0
            copy.attempts = 0
            copy.ambiguous_calls = 0
            if copy.status == "succeeded":
                copy.status = "deduplicated"
            out.append(copy)
        return out


@dataclass(slots=True)
class _Checked:
    """A verified download: its check, its metadata and document, and ``written`` (its
    stored info and URI) once it is stored."""

    output: images.CheckedOutput
    meta: tuple[dict[str, str], bytes | None]
    written: tuple[images.ImageInfo, str] | None


def store_retries(settings: Settings) -> stamina._core._RetryContextIterator:
    """Retries for a store that is unreachable: no attempt cap, ``store_retry_s`` in all."""
    return stamina.retry_context(
        on=StorageTransientError,
        attempts=None,
        timeout=settings.store_retry_s,
        wait_initial=settings.backoff_base_s,
        wait_max=settings.backoff_max_s,
        wait_jitter=settings.backoff_base_s,
    )


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def summarize(
    engine: Engine,
    shard_key: str,
    records: Sequence[CatalogRecord],
    part_uri: str | None,
    wall_s: float,
) -> ShardResult:
    """Fold a shard's records and the engine's billing counters into the shard's summary."""
    result = ShardResult(
        shard_key=shard_key,
        part_uri=part_uri,
        wall_s=wall_s,
        billed_images=engine.billed_images,
        possible_extra_images=engine.possible_extra_images,
        possible_extra_cost=engine.possible_extra_cost,
        ambiguous_calls=engine.ambiguous_calls,
        recovered_tasks=engine.recovered_tasks,
        left=engine.left,
    )
    requests: dict[str, int] = {}
    for record in records:
        result.statuses[record.status] += 1
        result.cost += record.cost
        if record.status == "succeeded":
            result.images += 1
        requests[record.request_key] = max(requests.get(record.request_key, 0), record.attempts)
    result.requests = len(requests)
    result.attempts = sum(requests.values())
    return result


async def run_shard(engine: Engine, shard_key: str) -> ShardResult:
    """Read a shard file, render it, write its catalog part; the shard's summary.

    The part's name is fixed per run and shard (``part-<run>-shard-NNNNN.parquet``), so a
    resumed or stopped-and-resumed shard replaces its earlier part (the journal restores the
    rows that part held) instead of adding a second copy of them.
    """
    began = time.monotonic()
    data = await engine._store_call(engine.store.get, shard_key)
    items = list(decode_shard(data))
    records = await engine.run_items(items)
    part_uri = await engine._store_call(
        catalog.write_part,
        engine.store,
        records,
        run_id=engine.run_id,
        label=shard_label(shard_key),
        unique=False,
    )
    return summarize(engine, shard_key, records, part_uri, time.monotonic() - began)


def shard_label(shard_key: str) -> str:
    """``runs/<run>/shards/shard-00003.jsonl.zst`` → ``shard-00003``."""
    return shard_key.rsplit("/", 1)[-1].split(".", 1)[0]
