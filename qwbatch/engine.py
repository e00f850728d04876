"""The shard executor: requests in, stored images and catalog records out. No Prefect here.

Inside a shard, requests run concurrently on one asyncio loop. Each goes through::

    stored already? → limiter slot → provider call (sync, or async task + poll)
      → download each result URL → verify (Pillow) → store.put(content-addressed key)
      → catalog records

Retries are classified (``qwbatch.errors``): throttling, 5xx and transport errors before the
request landed are retried with backoff and jitter; an *ambiguous* failure (the request may
have been billed) is retried at most ``Settings.ambiguous_retries`` times and its possible
spend is counted apart; permanent errors and moderation are recorded at once. A failure after
the provider succeeded retries the download and the upload, never the generation.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import stamina

from qwbatch import catalog, images, thumbs
from qwbatch.budget import BudgetedProvider, BudgetGuard
from qwbatch.config import Settings
from qwbatch.costs import PriceTable
from qwbatch.errors import (
    AmbiguousError,
    BudgetExceededError,
    ImageError,
    ModerationError,
    PermanentError,
    QwBatchError,
    ResultExpiredError,
    ThrottledError,
    TransientError,
)
from qwbatch.limits import LIMITERS, LimiterRegistry, LimitSpec, ModelLimiter
from qwbatch.models import CatalogRecord, ProviderResult, RenderRequest, Status
from qwbatch.plan import PlanItem, read_shard
from qwbatch.providers.base import Provider
from qwbatch.registry import ModelSpec, ModelTable
from qwbatch.storage import ObjectStore

#: ``(uri, sha256 of its original bytes) -> what is sent`` for one edit input
#: ("data:image/png;base64,…"); see ``qwbatch.staging.StagedInputs``.
InputLoader = Callable[[str, str], Awaitable[str]]
#: Told each request's records as soon as the request ends (progress displays). It runs on
#: the engine's event loop thread: keep it quick, thread-safe, and never raising.
RecordsCallback = Callable[[Sequence[CatalogRecord]], None]


def output_key(request_key: str, index: int) -> str:
    """Content-addressed key of a request's ``index``-th output image."""
    return f"images/{request_key[:2]}/{request_key}/{index}.png"


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


@dataclass(slots=True)
class _Call:
    """Bookkeeping for one request across its attempts."""

    attempts: int = 0
    ambiguous: int = 0
    task_id: str | None = None


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
    ) -> None:
        #: Unit prices for the catalog's unit_price and cost (qwbatch.costs).
        self.prices = prices or PriceTable.load(settings, table)
        #: With a budget, every paid call reserves its cost first (qwbatch.budget).
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
        self._scope = settings.base_url()
        #: Images the provider billed (its usage counts), and images that ambiguous calls
        #: may have billed without our seeing them; summed over everything this engine ran.
        self.billed_images = 0
        self.possible_extra_images = 0
        self.possible_extra_cost = 0.0

    # -- limits ---------------------------------------------------------------------------

    def limiter(self, spec: ModelSpec) -> ModelLimiter:
        limit = LimitSpec(
            rps=self.settings.rps or spec.rps,
            max_in_flight=self.settings.max_in_flight or spec.max_in_flight,
        )
        return self.limiters.get(self._scope, spec.name, limit)

    def _retry(
        self, on: Callable[[Exception], bool | float]
    ) -> stamina._core._RetryContextIterator:
        return stamina.retry_context(
            on=on,
            attempts=self.settings.max_attempts,
            timeout=None,
            wait_initial=self.settings.backoff_base_s,
            wait_max=self.settings.backoff_max_s,
            wait_jitter=self.settings.backoff_base_s,
        )

    # -- one shard ------------------------------------------------------------------------

    async def run_items(self, items: Sequence[PlanItem]) -> list[CatalogRecord]:
        """Render every item; records for all of them (and their folded duplicates)."""
        gate = asyncio.Semaphore(self.concurrency)

        async def one(item: PlanItem) -> list[CatalogRecord]:
            async with gate:
                records = await self.render(item)
            if self.on_records is not None:
                self.on_records(records)
            return records

        groups = await asyncio.gather(*(one(item) for item in items))
        return [record for group in groups for record in group]

    async def render(self, item: PlanItem) -> list[CatalogRecord]:
        """Render one request; its records, with folded duplicates recorded as deduplicated."""
        request = item.request
        spec = self.table.get(request.model)
        unit_price = self.prices.catalog_price(request.model)
        started = time.time()
        call = _Call()
        try:
            records = await self._stored_records(request, started)
            if records is None:
                result = await self._call_provider(request, spec, call)
                records = await self._harvest(request, result, call, unit_price, started)
        except QwBatchError as exc:
            records = [self._failure(request, exc, call, unit_price, started)]
        # Ambiguous attempts may have been billed without our seeing it: possible spend.
        records[0].possible_cost = call.ambiguous * request.n * unit_price
        for alias in item.aliases:
            folded = self._alias_records(records, alias.row_id, dict(alias.tags))
            for record in folded if alias.input_images else ():
                # The same input bytes, perhaps under other names: record the row's own.
                record.input_images = list(alias.input_images)
                record.input_notes = list(alias.input_notes)
            records.extend(folded)
        return records

    # -- steps ----------------------------------------------------------------------------

    async def _stored_records(
        self, request: RenderRequest, started: float
    ) -> list[CatalogRecord] | None:
        """Records for outputs already in the store (a crash after upload); None if absent."""
        infos = []
        for index in range(request.n):
            info = await asyncio.to_thread(self.store.head, output_key(request.request_key, index))
            if info is None:
                return None
            infos.append(info)
        records = []
        for index, info in enumerate(infos):
            meta = info.metadata
            records.append(
                self._record(
                    request,
                    "deduplicated",
                    started,
                    image_index=index,
                    output_uri=self.store.uri(output_key(request.request_key, index)),
                    sha256=meta.get("sha256"),
                    bytes=info.size,
                    width=_int_or_none(meta.get("width")),
                    height=_int_or_none(meta.get("height")),
                    unit_price=0.0,
                )
            )
        return records

    async def _call_provider(
        self, request: RenderRequest, spec: ModelSpec, call: _Call
    ) -> ProviderResult:
        """The paid call, retried only where retrying cannot bill twice (or within budget)."""
        limiter = self.limiter(spec)
        use_task = spec.async_endpoint and self.settings.prefer_async and request.mode == "generate"
        sent: list[str] = []
        if request.input_images:
            if self.input_loader is None:
                raise PermanentError("edit inputs given but no input loader configured")
            pairs = zip(request.input_images, request.input_sha256, strict=True)
            sent = list(await asyncio.gather(*(self.input_loader(u, s) for u, s in pairs)))

        def retryable(exc: Exception) -> bool | float:
            if isinstance(exc, ThrottledError):
                return exc.retry_after if exc.retry_after else True
            if isinstance(exc, AmbiguousError):
                return call.ambiguous <= self.settings.ambiguous_retries
            return isinstance(exc, TransientError)

        async for attempt in self._retry(retryable):
            with attempt:
                if call.task_id is not None:
                    # The provider accepted a task: poll it again, never resubmit.
                    result = await self.provider.wait_task(call.task_id)
                    self.billed_images += result.billed_images
                    return result
                call.attempts += 1
                try:
                    async with limiter.slot():
                        if use_task:
                            call.task_id = await self.provider.submit_task(request)
                            result = await self.provider.wait_task(call.task_id)
                        else:
                            result = await self.provider.generate(request, sent)
                except ThrottledError as exc:
                    limiter.on_throttle(exc.retry_after)
                    raise
                except BudgetExceededError:
                    call.attempts -= 1  # refused before it was sent: not a provider call
                    raise
                except AmbiguousError:
                    call.ambiguous += 1
                    self.possible_extra_images += request.n
                    self.possible_extra_cost += request.n * self.prices.catalog_price(spec.name)
                    raise
                limiter.on_success()
                self.billed_images += result.billed_images
                return result
        raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover

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
                data, info, uri = await self._store_image(request, image.url, image.index)
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
        self, request: RenderRequest, url: str, index: int
    ) -> tuple[bytes, images.ImageInfo, str]:
        """Fetch, verify and upload one image, retrying transient and corrupt downloads."""

        def retryable(exc: Exception) -> bool:
            return isinstance(exc, TransientError | ImageError)

        async for attempt in self._retry(retryable):
            with attempt:
                data = await self.provider.download(url)
                info = images.verify_image(data)
        key = output_key(request.request_key, index)
        metadata = {
            "request-key": request.request_key,
            "model": request.model,
            "mode": request.mode,
            "seed": str(request.seed),
            "image-index": str(index),
            "sha256": info.sha256,
            "width": str(info.width),
            "height": str(info.height),
            "run-id": self.run_id,
        }
        async for attempt in self._retry(lambda exc: isinstance(exc, TransientError)):
            with attempt:
                put = await asyncio.to_thread(
                    self.store.put,
                    key,
                    data,
                    content_type=info.content_type,
                    metadata=metadata,
                    if_none_match=True,
                )
        await asyncio.to_thread(
            thumbs.store_thumbnail, self.store, request.request_key, index, data
        )
        if not put.created:
            # Content-addressed: the object already there is the output of record.
            existing = await asyncio.to_thread(self.store.head, key)
            if existing is not None and existing.metadata.get("sha256"):
                info = images.ImageInfo(
                    format=info.format,
                    width=_int_or_none(existing.metadata.get("width")) or 0,
                    height=_int_or_none(existing.metadata.get("height")) or 0,
                    sha256=existing.metadata["sha256"],
                    bytes=existing.size,
                )
        return data, info, put.uri

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
        return CatalogRecord(
            run_id=self.run_id,
            row_id=request.row_id,
            request_key=request.request_key,
            mode=request.mode,
            model=request.model,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            size=request.size,
            n=request.n,
            seed=request.seed,
            status=status,
            image_index=image_index,
            error_code=error_code,
            error_message=error_message,
            attempts=call.attempts if call else 0,
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
            tags=dict(request.tags),
            input_images=list(request.input_images),
            input_sha256=list(request.input_sha256),
            input_notes=list(request.input_notes),
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
            if copy.status == "succeeded":
                copy.status = "deduplicated"
            out.append(copy)
        return out


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
    """Read a shard file, render it, write its catalog part; the shard's summary."""
    began = time.monotonic()
    items = list(read_shard(engine.store, shard_key))
    records = await engine.run_items(items)
    label = shard_key.rsplit("/", 1)[-1].split(".", 1)[0]
    part_uri = await asyncio.to_thread(
        catalog.write_part, engine.store, records, run_id=engine.run_id, label=label
    )
    return summarize(engine, shard_key, records, part_uri, time.monotonic() - began)
