"""Recording what a request came to: its catalog records, its journal line, the records callback.

:class:`Recorder` builds every :class:`~qwbatch.core.types.CatalogRecord` a render makes (one
per image, or one per failed request), folds duplicate rows into copies of their request's
records, journals each request's records and costs when it ends (so a resume restores it
instead of sending it again), and tells a progress display as soon as a request ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from qwbatch.core.errors import (
    AmbiguousError,
    BudgetExceededError,
    ModerationError,
    QwBatchError,
    ResultExpiredError,
)
from qwbatch.core.types import CatalogRecord, PlanItem, ProviderResult, RenderRequest, Status
from qwbatch.core.uris import recorded_uri
from qwbatch.render.journal import Finished, Journal
from qwbatch.render.ledger import Ledger, Totals
from qwbatch.render.outputs import int_or_none
from qwbatch.storage.layout import output_key
from qwbatch.storage.stores import ObjectInfo, ObjectStore

#: Told each request's records as soon as the request ends (progress displays). It runs on
#: the engine's event loop thread: keep it quick, thread-safe, and never raising.
RecordsCallback = Callable[[Sequence[CatalogRecord]], None]


class Recorder:
    """Builds and journals a run's catalog records; one per engine."""

    def __init__(
        self,
        *,
        run_id: str,
        currency: str,
        journal: Journal,
        totals: Totals,
        store: ObjectStore,
        on_records: RecordsCallback | None = None,
    ) -> None:
        self.run_id = run_id
        self.currency = currency
        self.journal = journal
        self.totals = totals
        self.store = store
        self.on_records = on_records

    def record(
        self,
        request: RenderRequest,
        status: Status,
        started: float,
        *,
        ledger: Ledger | None = None,
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
        """One catalog record of ``request`` (``started``: epoch seconds; prices in the
        run's currency)."""
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
            attempts=ledger.attempts if ledger else 0,
            ambiguous_calls=ledger.ambiguous if ledger else 0,
            provider_request_id=result.request_id if result else getattr(error, "request_id", None),
            provider_task_id=(result.task_id if result else None)
            or (ledger.task_id if ledger else None),
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

    def failure(
        self, request: RenderRequest, exc: QwBatchError, ledger: Ledger, started: float
    ) -> CatalogRecord:
        """The one record of a request that failed; failed requests are not billed, and
        ambiguous spend is counted apart (:class:`~qwbatch.render.ledger.Totals`)."""
        status: Status
        if isinstance(exc, ModerationError):
            status = "moderated"
        elif isinstance(exc, AmbiguousError):
            status = "ambiguous"
        elif isinstance(exc, ResultExpiredError):
            status = "expired"
        elif isinstance(exc, BudgetExceededError) and ledger.ambiguous:
            # The budget refused the retry of a lost answer: the first call may be billed.
            status = "ambiguous"
            exc = AmbiguousError(f"the answer was lost (it may be billed); retry: {exc.message}")
        elif isinstance(exc, BudgetExceededError):
            status = "skipped_budget"
        else:
            status = "failed"
        return self.record(request, status, started, ledger=ledger, error=exc)

    def stored(
        self,
        request: RenderRequest,
        infos: Sequence[ObjectInfo],
        ledger: Ledger,
        unit_price: float,
        started: float,
    ) -> list[CatalogRecord]:
        """Records for outputs found already stored (:meth:`Outputs.stored`).

        An output this run stored (its ``run-id``) for a request the journal saw it send is
        recorded as succeeded at its price: this run paid for it before a crash kept it from
        the catalog. Others are deduplicated.
        """
        sent_before = self.journal.state.calls(request.request_key) > 0
        records = []
        for index, info in enumerate(infos):
            meta = info.metadata
            ours = sent_before and meta.get("run-id") == self.run_id
            if ours:
                self.totals.billed(ledger, 1)
            records.append(
                self.record(
                    request,
                    "succeeded" if ours else "deduplicated",
                    started,
                    ledger=ledger if ours else None,
                    image_index=index,
                    output_uri=self.store.uri(output_key(request.request_key, index)),
                    sha256=meta.get("sha256"),
                    bytes=info.size,
                    width=int_or_none(meta.get("width")),
                    height=int_or_none(meta.get("height")),
                    unit_price=unit_price if ours else 0.0,
                    cost=unit_price if ours else 0.0,
                )
            )
        return records

    def finish(
        self, item: PlanItem, records: list[CatalogRecord], ledger: Ledger, unit_price: float
    ) -> list[CatalogRecord]:
        """The request ended: its possible spend, its folded duplicates' records, and a
        journal line with all of them (so a resume restores them)."""
        request = item.request
        # Ambiguous attempts may have been billed without our seeing it: possible spend.
        records[0].possible_cost = ledger.ambiguous * request.n * unit_price
        for alias in item.aliases:
            folded = fold(records, alias.row_id, dict(alias.tags))
            for record in folded if alias.input_images else ():
                # The same input bytes, perhaps under other names: record the row's own.
                record.input_images = [recorded_uri(uri) for uri in alias.input_images]
                record.input_notes = list(alias.input_notes)
            records.extend(folded)
        self.journal.done(request.request_key, ledger.finished(records))
        return records

    def restore(self, finished: Finished) -> list[CatalogRecord]:
        """A request the journal says ended: its records and counters, nothing re-sent."""
        return self.totals.restore(finished)

    def tell(self, records: Sequence[CatalogRecord]) -> None:
        """Tell the records callback (if any) that a request ended with ``records``."""
        if self.on_records is not None:
            self.on_records(records)


def fold(
    records: Sequence[CatalogRecord], row_id: str, tags: dict[str, str]
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
