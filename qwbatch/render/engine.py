"""The shard executor: requests in, stored images and catalog records out. No Prefect here.

Inside a shard, requests run concurrently on one asyncio loop. Each goes through::

    stored already? → limiter slot → provider call (sync, or async task + poll)
      → download each result URL → verify (Pillow) → store.put(content-addressed key)
      → catalog records

:class:`Engine` only wires the steps together; each has a collaborator of its own:

- :class:`~qwbatch.render.calls.Caller` sends the paid call and retries it where that cannot
  bill twice, counting *ambiguous* calls (sent, answer lost) as possible spend;
- :class:`~qwbatch.render.harvest.Harvester` downloads the result images, retrying downloads
  and store writes, never the generation;
- :class:`~qwbatch.render.outputs.Outputs` verifies and writes each output (bytes, metadata,
  thumbnail), retrying a store that is down for ``Settings.store_retry_s``;
- :class:`~qwbatch.render.recorder.Recorder` builds the catalog records and journals each
  request's end; :class:`~qwbatch.render.ledger.Totals` sums what was billed.

Three hooks make a run survive crashes and stops (each optional):

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
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from qwbatch.budget import BudgetedProvider, BudgetGuard
from qwbatch.catalog import table as catalog
from qwbatch.core.costs import PriceTable
from qwbatch.core.errors import JournalError, ProviderUnavailableError, QwBatchError
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.core.stop import Guard, StopSignal, cancel_when_stopped
from qwbatch.core.types import CatalogRecord, PlanItem, RenderRequest
from qwbatch.limits import LIMITERS, LimiterRegistry
from qwbatch.plan import decode_shard
from qwbatch.providers.base import Provider
from qwbatch.render.breaker import Breaker
from qwbatch.render.calls import Caller, InputLoader
from qwbatch.render.harvest import Harvester
from qwbatch.render.journal import Journal
from qwbatch.render.ledger import Ledger, Totals
from qwbatch.render.outputs import Outputs
from qwbatch.render.recorder import Recorder, RecordsCallback
from qwbatch.render.recovery import TaskFinder
from qwbatch.render.rerolls import TextChecks, shared_reader
from qwbatch.render.retries import store_retries
from qwbatch.storage.layout import shard_label
from qwbatch.storage.stores import ObjectStore
from qwbatch.text import TextReader

__all__ = [
    "Engine",
    "InputLoader",
    "RecordsCallback",
    "ShardResult",
    "run_shard",
    "store_retries",
    "summarize",
]


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
        breaker: Breaker | None = None,
        reader: TextReader | None = None,
    ) -> None:
        #: Unit prices for the catalog's unit_price and cost (qwbatch.core.costs).
        self.prices = prices or PriceTable.load(settings, table)
        #: With a budget, every paid call reserves its cost first (qwbatch.budget.provider).
        self.provider = (
            provider if budget is None else BudgetedProvider(provider, budget, self.prices)
        )
        self.store = store
        self.table = table
        self.settings = settings
        self.run_id = run_id
        self.concurrency = concurrency
        self.journal = journal if journal is not None else Journal()
        self.finder = finder
        if finder is None and settings.recover_tasks:
            self.finder = TaskFinder(provider, journal_tasks=self.journal.known_tasks)
        self.stop = stop if stop is not None else StopSignal()
        #: What every request this engine ran was billed, may have been billed, and left.
        self.totals = Totals()
        self.caller = Caller(
            provider=self.provider,
            settings=settings,
            prices=self.prices,
            limiters=limiters,
            journal=self.journal,
            totals=self.totals,
            finder=self.finder,
            input_loader=input_loader,
            breaker=breaker,
            stop=self.stop,
        )
        self.outputs = Outputs(store=store, settings=settings, run_id=run_id)
        self.recorder = Recorder(
            run_id=run_id,
            currency=settings.currency(),
            journal=self.journal,
            totals=self.totals,
            store=store,
            on_records=on_records,
        )
        self.harvester = Harvester(
            provider=self.provider, settings=settings, outputs=self.outputs, recorder=self.recorder
        )
        #: Rows with expected text: read back, re-rolled while misspelt (render.rerolls).
        #: The reader's worker processes start on the first row that needs them.
        self.text = TextChecks(
            reader=reader if reader is not None else shared_reader(settings.text_workers),
            settings=settings,
            store=store,
            get=lambda key: self.outputs.store_call(store.get, key),
            stop=self.stop,
        )

    # -- what it ran (summed over every request) -------------------------------------------

    @property
    def billed_images(self) -> int:
        """Images the provider billed (its usage counts)."""
        return self.totals.billed_images

    @property
    def possible_extra_images(self) -> int:
        """Images that ambiguous calls may have billed without our seeing them."""
        return self.totals.possible_extra_images

    @property
    def possible_extra_cost(self) -> float:
        """What those images may have cost, in the run's currency."""
        return self.totals.possible_extra_cost

    @property
    def ambiguous_calls(self) -> int:
        """Calls whose answer was lost after they were sent."""
        return self.totals.ambiguous_calls

    @property
    def recovered_tasks(self) -> int:
        """Async tasks found again after their creation answer was lost."""
        return self.totals.recovered_tasks

    @property
    def left(self) -> int:
        """Requests not finished because the run was stopped."""
        return self.totals.left

    # -- one shard -------------------------------------------------------------------------

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

        async def one(item: PlanItem, ledger: Ledger) -> list[CatalogRecord]:
            try:
                async with gate:
                    if not self.stop.is_set():
                        records = await self._render(item, ledger)
                        self.recorder.tell(records)
                        return records
            except asyncio.CancelledError:
                if not self.stop.is_set():
                    raise  # not our stop: someone cancelled the shard itself
            except ProviderUnavailableError:
                pass  # refused account-wide, or the breaker is open: left for the next run
            self.totals.left += 1
            return []

        guards: dict[asyncio.Task[list[CatalogRecord]], Guard] = {}
        for item in ordered:
            ledger = Ledger()
            guards[asyncio.create_task(one(item, ledger))] = ledger.guarded
        watcher = asyncio.create_task(cancel_when_stopped(self.stop, guards))
        try:
            groups = await asyncio.gather(*guards)
        finally:
            watcher.cancel()
            await self.journal.close()
        return [record for group in groups for record in group]

    async def render(self, item: PlanItem) -> list[CatalogRecord]:
        """Render one request; its records, with folded duplicates recorded as deduplicated."""
        return await self._render(item, Ledger())

    async def _render(self, item: PlanItem, ledger: Ledger) -> list[CatalogRecord]:
        request = item.request
        finished = self.journal.state.finished(request.request_key)
        if finished is not None:
            return self.recorder.restore(finished)
        spec = self.table.get(request.model)
        unit_price = self.prices.catalog_request_price(request)
        started = time.time()
        answered = self.caller.resume(request, spec, ledger)
        try:
            stored = await self.outputs.stored(request, unit_price)
            if stored is not None:
                records = self.recorder.stored(request, stored, ledger, unit_price, started)
            else:
                if answered is not None:
                    # Paid for before the crash, not harvested.
                    self.totals.billed(ledger, answered.billed_images)
                    result = answered
                else:
                    result = await self.caller.send(request, spec, ledger)
                with ledger.guarded():
                    records = await self.harvester.harvest(
                        request, result, ledger, unit_price, started
                    )
        except (JournalError, ProviderUnavailableError):
            raise
        except QwBatchError as exc:
            records = [self.recorder.failure(request, exc, ledger, started)]
        if request.expected_text:
            # Held for the re-rolls: a stop waits for the call on the wire, and the checks
            # start no new re-roll once it is set (the row is then left to a resume).
            with ledger.guarded():
                records = await self.text.check(request, records, self._reroll)
        return self.recorder.finish(item, records, ledger, unit_price)

    async def _reroll(self, request: RenderRequest) -> list[CatalogRecord]:
        """One re-roll of a misspelt image: a request of its own (journaled, billed, budgeted
        and restored on resume like any other), with no text of its own to check."""
        return await self._render(PlanItem(request), Ledger())


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
    data = await engine.outputs.store_call(engine.store.get, shard_key)
    items = list(decode_shard(data))
    records = await engine.run_items(items)
    part_uri = await engine.outputs.store_call(
        catalog.write_part,
        engine.store,
        records,
        run_id=engine.run_id,
        label=shard_label(shard_key),
        unique=False,
    )
    return summarize(engine, shard_key, records, part_uri, time.monotonic() - began)
