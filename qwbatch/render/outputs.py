"""Storing an output: verify the image, write its bytes, metadata and thumbnail; store retries.

:class:`Outputs` owns everything a render writes to (or reads back from) the store:

- :meth:`~Outputs.check_and_write` verifies a download (Pillow) and writes it under its
  content-addressed key with its metadata, its prompt document and its thumbnail, all in one
  worker-thread hop (a hop costs the event loop more than the small writes themselves);
- :meth:`~Outputs.write` is those writes alone, retried while the store is unreachable
  (``Settings.store_retry_s``) with the image bytes waiting in memory, never the download;
- :meth:`~Outputs.deliver` writes an output at its request's channel size (``target_size``:
  cropped or padded to exactly those pixels) beside it, under ``delivered/``;
- :meth:`~Outputs.stored` finds the outputs a crash left stored but not catalogued, and
  writes the metadata of one that lost it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from qwbatch.core import images
from qwbatch.core.errors import ImageError, StorageTransientError
from qwbatch.core.model_table import parse_target_size
from qwbatch.core.settings import Settings
from qwbatch.core.types import ProviderResult, RenderRequest
from qwbatch.render.retries import store_retries
from qwbatch.storage import thumbs
from qwbatch.storage.layout import delivered_key, output_key, request_doc_key
from qwbatch.storage.metadata import image_metadata
from qwbatch.storage.stores import ObjectInfo, ObjectStore

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Checked:
    """A verified download: its check, its metadata and document, and ``written`` (its
    stored info and URI) once it is stored."""

    output: images.CheckedOutput
    meta: tuple[dict[str, str], bytes | None]
    written: tuple[images.ImageInfo, str] | None


class Outputs:
    """Writes a run's outputs to its store; one per engine."""

    def __init__(self, *, store: ObjectStore, settings: Settings, run_id: str) -> None:
        self.store = store
        self.settings = settings
        self.run_id = run_id
        self.currency = settings.currency()

    async def store_call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
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

    async def stored(self, request: RenderRequest, unit_price: float) -> list[ObjectInfo] | None:
        """The request's outputs already in the store (a crash after upload); None if absent.

        An output without its metadata (a crash between a local file and its sidecar) is
        verified and its metadata written again.
        """
        infos = []
        for index in range(request.n):
            key = output_key(request.request_key, index)
            info = await self.store_call(self.store.head, key)
            if info is not None and "sha256" not in info.metadata:
                info = await self._restore_metadata(request, index, key, unit_price)
            if info is None:
                return None
            if request.target_size is not None:  # a crash may have come before the delivery
                delivered = await self.store_call(
                    self.store.head, delivered_key(request.request_key, index)
                )
                if delivered is None:
                    data = await self.store_call(self.store.get, key)
                    try:
                        await self.store_call(self.deliver, request, index, data)
                    except ImageError:
                        return None
            infos.append(info)
        return infos

    async def _restore_metadata(
        self, request: RenderRequest, index: int, key: str, unit_price: float
    ) -> ObjectInfo | None:
        """Verify an output that lost its metadata and write it again with its metadata (as
        this run's: only a crash of the run that stored it leaves one so); None if the bytes
        are not a valid image, which the harvest then replaces."""
        data = await self.store_call(self.store.get, key)
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
        await self.store_call(
            self.store.put, key, data, content_type=info.content_type, metadata=metadata
        )
        return await self.store_call(self.store.head, key)

    def check_and_write(
        self,
        request: RenderRequest,
        index: int,
        key: str,
        data: bytes,
        result: ProviderResult,
        unit_price: float,
    ) -> Checked:
        """Verify a download (ImageError if it is not sound) and store it with its metadata,
        on a worker thread. ``written`` is None when the store failed transiently: the
        caller retries the writes (:meth:`write`), never the download."""
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
            written = self.write(request, index, key, data, checked, *meta)
        except StorageTransientError:
            written = None
        return Checked(checked, meta, written)

    def write(
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
        if request.target_size is not None:
            self.deliver(request, index, data)
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
                    width=int_or_none(existing.metadata.get("width")) or 0,
                    height=int_or_none(existing.metadata.get("height")) or 0,
                    sha256=existing.metadata["sha256"],
                    bytes=existing.size,
                )
        return info, put.uri

    def deliver(self, request: RenderRequest, index: int, data: bytes) -> None:
        """Store output ``data`` at its request's ``target_size`` (exactly those pixels) under
        its delivered key; CPU-bound, on a worker thread. Derived from the output's bytes,
        so writing it again (a store retry, a resume) writes the same image."""
        target = parse_target_size(request.target_size or "")
        if target is None:  # the manifest reader wrote it: it parses
            raise ImageError(f"target_size {request.target_size!r} is not W*H")
        fitted = images.fit_to(data, target.width, target.height, pad=target.fit == "pad")
        self.store.put(
            delivered_key(request.request_key, index),
            fitted,
            content_type="image/png",
            metadata={"request-key": request.request_key, "target-size": str(target)},
        )


def int_or_none(text: str | None) -> int | None:
    """A metadata value as an int; None when it is missing or not a number."""
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
