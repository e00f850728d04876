"""Harvesting a provider's answer: download each result image, store it, record it.

The generation is never repeated here: a failure after the provider succeeded retries the
download (transient errors, corrupt bytes) and the store writes, not the call. Each download is
verified and written in one worker-thread hop (:meth:`Outputs.check_and_write`); when only the
store failed, the writes are retried alone while the bytes wait in memory.
"""

from __future__ import annotations

import asyncio

from qwbatch.core import images
from qwbatch.core.errors import ImageError, QwBatchError, ResultExpiredError, TransientError
from qwbatch.core.settings import Settings
from qwbatch.core.types import CatalogRecord, ProviderResult, RenderRequest, Status
from qwbatch.providers.base import Provider
from qwbatch.render.ledger import Ledger
from qwbatch.render.outputs import Checked, Outputs
from qwbatch.render.recorder import Recorder
from qwbatch.render.retries import provider_retries
from qwbatch.storage.layout import output_key


class Harvester:
    """Downloads, stores and records a provider's result images; one per engine."""

    def __init__(
        self, *, provider: Provider, settings: Settings, outputs: Outputs, recorder: Recorder
    ) -> None:
        self.provider = provider
        self.settings = settings
        self.outputs = outputs
        self.recorder = recorder

    async def harvest(
        self,
        request: RenderRequest,
        result: ProviderResult,
        ledger: Ledger,
        unit_price: float,
        started: float,
    ) -> list[CatalogRecord]:
        """Download, verify and store each image; its records (one per image asked for)."""
        record = self.recorder.record
        records: list[CatalogRecord] = []
        if result.cost is not None:
            # The provider said what the call cost (BFL credits, OpenAI usage): that is the bill.
            unit_price = round(result.cost / max(1, len(result.images)), 6)
        for image in result.images:
            try:
                data, info, uri = await self._store_image(
                    request, image.url, image.index, result, unit_price
                )
            except QwBatchError as exc:
                status: Status = "expired" if isinstance(exc, ResultExpiredError) else "failed"
                records.append(
                    record(
                        request,
                        status,
                        started,
                        ledger=ledger,
                        result=result,
                        image_index=image.index,
                        error=exc,
                        unit_price=unit_price,
                        cost=unit_price,
                    )
                )
                continue
            records.append(
                record(
                    request,
                    "succeeded",
                    started,
                    ledger=ledger,
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
                record(
                    request,
                    "failed",
                    started,
                    ledger=ledger,
                    result=result,
                    error_code="PartialFailure",
                    error_message=f"{missing} of {request.n} images failed ({codes})",
                    unit_price=unit_price,
                )
            )
        # Billed images beyond those recorded (usage says more than we got) cost all the same.
        extra = result.billed_images - len(result.images)
        if extra > 0 and records and result.cost is None:
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
        outputs = self.outputs
        key = output_key(request.request_key, index)

        async def fetch() -> tuple[bytes, Checked]:
            data = await self.provider.download(url)
            # Decoding a 2048² output takes tens of ms: off the event loop, once for both the
            # verification and the thumbnail, in the same worker-thread hop as the writes
            # (a hop costs the event loop more than the small writes themselves).
            return data, await asyncio.to_thread(
                outputs.check_and_write, request, index, key, data, result, unit_price
            )

        def retryable(exc: Exception) -> bool:
            return isinstance(exc, TransientError | ImageError)

        # The first attempt outside stamina (see Outputs.store_call); the rest with its backoff.
        attempts = self.settings.max_attempts
        try:
            data, checked = await fetch()
        except (TransientError, ImageError):
            if attempts <= 1:
                raise
            async for attempt in provider_retries(self.settings, retryable, attempts=attempts - 1):
                with attempt:
                    data, checked = await fetch()
        if checked.written is None:  # the store did not answer: retry the writes alone
            checked.written = await outputs.store_call(
                outputs.write, request, index, key, data, checked.output, *checked.meta
            )
        info, uri = checked.written
        return data, info, uri
