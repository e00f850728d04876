"""Text checks in the render stage: read each image's words back, re-roll the misspelt ones.

A row with ``expected_text`` has every image it made read by OCR
(:class:`qwbatch.text.TextReader`, worker processes) and judged
(:func:`qwbatch.text.judge`). An image that fails is rendered again — one image, with a
seed derived from the row's seed, the image's index and the attempt (:func:`reroll_seed`),
so a resumed run makes the same choice — up to ``text_rerolls`` times, until one passes.

Each re-roll is a request of its own (its own request key, output key and journal lines),
rendered through the engine's ordinary path: journaled before it is sent, billed and
counted like any call, refused by the budget like any call (the budget ends the re-rolls),
and restored, not sent again, when a resumed run finds it finished in the journal.

The row keeps the best attempt (lowest character error rate; the first on ties): its
image, seed and provider ids; its ``cost`` is every attempt's, and ``rerolls`` says how
many there were. Still failing after the last re-roll, the row ends ``text_mismatch``,
its best image stored and shown. An image that cannot be read at all (a worker died)
also ends ``text_mismatch``, with the reason in ``error_message``: it is never called good.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from qwbatch.core.costs import ZERO, as_float, money
from qwbatch.core.errors import ImageError, TextReadError
from qwbatch.core.keys import SEED_MAX, RequestFields, key_and_seed
from qwbatch.core.settings import Settings
from qwbatch.core.stop import StopSignal
from qwbatch.core.types import CatalogRecord, RenderRequest
from qwbatch.storage.layout import output_key
from qwbatch.storage.stores import ObjectStore
from qwbatch.text import TextReader, TextVerdict, judge

#: Renders one re-roll request through the engine; its records (one image, or a failure).
RenderOne = Callable[[RenderRequest], Awaitable[list[CatalogRecord]]]
#: Reads an object of the store (with the engine's store retries).
StoreGet = Callable[[str], Awaitable[bytes]]

#: Statuses of records that hold an image to read.
_WITH_IMAGE = frozenset({"succeeded", "deduplicated"})

_SHARED: dict[int | None, TextReader] = {}


def shared_reader(workers: int | None) -> TextReader:
    """The process's reader (its worker processes start on the first read and serve every
    shard this process runs); :func:`close_shared_readers` stops them."""
    reader = _SHARED.get(workers)
    if reader is None:
        reader = _SHARED[workers] = TextReader(workers=workers)
    return reader


def close_shared_readers() -> None:
    """Stop the worker processes of every shared reader."""
    while _SHARED:
        _, reader = _SHARED.popitem()
        reader.close()


def reroll_seed(seed: int, index: int, attempt: int) -> int:
    """The seed of re-roll ``attempt`` (1, 2, …) of image ``index`` of a row seeded ``seed``."""
    digest = hashlib.sha256(f"qwbatch-reroll\x00{seed}\x00{index}\x00{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (SEED_MAX + 1)


def reroll_request(request: RenderRequest, index: int, attempt: int) -> RenderRequest:
    """Re-roll ``attempt`` of image ``index`` of ``request``: one image, a derived seed,
    its own request key; no expected text (the caller judges it)."""
    # Its key holds everything the re-roll is rendered with, params and target_size
    # included: two rows that differ only in those must not share a re-roll's key (the
    # journal would hand one row the other's image on a resume).
    fields = dataclasses.replace(
        RequestFields.of(request), n=1, seed=reroll_seed(request.seed, index, attempt)
    )
    key, seed = key_and_seed(fields)
    return dataclasses.replace(request, request_key=key, seed=seed, n=1, expected_text=())


@dataclass(frozen=True, slots=True)
class _Attempt:
    record: CatalogRecord
    verdict: TextVerdict | None
    #: Why the image could not be read (worker died, not an image), or None.
    unread: str | None = None

    @property
    def score(self) -> float:
        return self.verdict.cer if self.verdict is not None else 2.0


class TextChecks:
    """Reads, judges and re-rolls the images of rows that expect text; one per engine."""

    def __init__(
        self,
        *,
        reader: TextReader,
        settings: Settings,
        store: ObjectStore,
        get: StoreGet,
        stop: StopSignal,
    ) -> None:
        self.reader = reader
        self.rerolls = settings.text_rerolls
        self.max_cer = settings.text_max_cer
        self.store = store
        self.get = get
        self.stop = stop

    async def check(
        self, request: RenderRequest, records: list[CatalogRecord], render_one: RenderOne
    ) -> list[CatalogRecord]:
        """``records`` of ``request`` with each image judged, re-rolled while it fails."""
        return list(await asyncio.gather(*(self._image(request, r, render_one) for r in records)))

    async def _image(
        self, request: RenderRequest, record: CatalogRecord, render_one: RenderOne
    ) -> CatalogRecord:
        if record.status not in _WITH_IMAGE or record.image_index is None:
            return record
        index = record.image_index
        best = await self._judge(request.expected_text, record, request.request_key, index)
        spent = [record]
        for attempt in range(1, self.rerolls + 1):
            if best.verdict is not None and best.verdict.ok:
                break
            if self.stop.is_set():
                # Not judged yet: leave the row to the journal, so a resume finishes it.
                raise asyncio.CancelledError
            again = reroll_request(request, index, attempt)
            [rolled, *_] = await render_one(again)
            spent.append(rolled)
            if rolled.status not in _WITH_IMAGE:
                break  # the budget refused it, or the call failed: keep what we have
            judged = await self._judge(request.expected_text, rolled, again.request_key, 0)
            if judged.score < best.score:
                best = judged
        return self._kept(request, record, best, spent)

    async def _judge(
        self, expected: Sequence[str], record: CatalogRecord, request_key: str, index: int
    ) -> _Attempt:
        try:
            data = await self.get(output_key(request_key, index))
            found = await self.reader.read(data)
        except (TextReadError, ImageError) as exc:
            return _Attempt(record, None, unread=exc.message)
        return _Attempt(record, judge(expected, found, max_cer=self.max_cer))

    def _kept(
        self,
        request: RenderRequest,
        first: CatalogRecord,
        best: _Attempt,
        spent: Sequence[CatalogRecord],
    ) -> CatalogRecord:
        """The row's record for one image: the first attempt's identity (row, request key,
        index), the best attempt's image, every attempt's cost."""
        image = best.record
        kept = dataclasses.replace(
            first,
            seed=image.seed,
            output_uri=image.output_uri,
            # Under the request key of the attempt that made it (a re-roll's own).
            output_key=output_key(image.request_key, image.image_index or 0),
            sha256=image.sha256,
            bytes=image.bytes,
            width=image.width,
            height=image.height,
            provider_request_id=image.provider_request_id,
            provider_task_id=image.provider_task_id,
            attempts=sum(r.attempts for r in spent),
            ambiguous_calls=sum(r.ambiguous_calls for r in spent),
            cost=as_float(sum((money(r.cost) for r in spent), ZERO)),
            possible_cost=as_float(sum((money(r.possible_cost) for r in spent), ZERO)),
            finished_at=max(r.finished_at or 0.0 for r in spent) or None,
            text_expected=list(request.expected_text),
            rerolls=sum(1 for r in spent[1:] if r.status in _WITH_IMAGE),
        )
        if best.verdict is None:
            kept.status = "text_mismatch"
            kept.error_code = "TextReadError"
            kept.error_message = f"the image's text could not be read: {best.unread}"
            return kept
        kept.text_found = best.verdict.found
        kept.text_cer = best.verdict.cer
        kept.text_ok = best.verdict.ok
        if not best.verdict.ok:
            kept.status = "text_mismatch"
            kept.error_code = "TextMismatch"
            refused = spent[-1] if spent[-1].status not in _WITH_IMAGE else None
            kept.error_message = (
                f"text read with CER {best.verdict.cer:.3f} > {self.max_cer:g} after "
                f"{kept.rerolls} re-roll(s)"
                + (f"; the next was not rendered: {refused.error_message}" if refused else "")
            )
        else:
            kept.status = image.status  # a re-roll this run paid for may have made it
        return kept
