"""One input pipeline for a run: fetch and check at plan time, stage, send from the stage.

Planning resolves every edit input through :class:`InputStage` (the manifest reader's
``resolve_input``): the original bytes are fetched once per distinct URI
(:mod:`qwbatch.inputs.fetch`), hashed, checked and normalised with Pillow
(:func:`qwbatch.core.images.normalise_input`) once per distinct content, and the bytes to send
are stored content-addressed in the output store::

    DEST/inputs/<sha256[:2]>/<sha256 of the ORIGINAL bytes>     the normalised image
        metadata: sha256 (of what is stored), format, width, height, original-*, changes,
                  normaliser (the version of the rules that produced it)

A bad input rejects its row with the reason, before anything is sent anywhere. Shards, on any
worker, read the staged bytes back with :class:`StagedInputs` (the engine's ``input_loader``)
knowing only ``RenderRequest.input_sha256``: no source is fetched twice in a run, and a shard
needs no access to the manifest's folder, the input bucket or the web.

**Why the sha256 of the original bytes** (not of the normalised ones) names the input, in the
request key and in the stage: it is what the user gave, so a changed file is a new request and
the same bytes behind two URIs fold onto one; it is what the catalog records as an output's
``sha256``, so an edit of an earlier output links to it by content (:mod:`qwbatch.inputs.lineage`);
and it is known before normalising, so a rerun finds the staged copy without decoding.
Normalisation is a deterministic function of those bytes under a fixed set of rules
(``NORMALISER``); a staged object made under other rules is made again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import stamina

from qwbatch.core import images
from qwbatch.core.errors import (
    ImageError,
    InputError,
    ObjectNotFoundError,
    PermanentError,
    QwBatchError,
    TransientError,
)
from qwbatch.inputs.fetch import InputFetcher, display_uri
from qwbatch.manifest import InputDigest
from qwbatch.storage.layout import staged_key
from qwbatch.storage.stores import ObjectStore

if TYPE_CHECKING:
    from qwbatch.core.settings import Settings

#: The rules that turn original bytes into staged bytes; change it when they change.
NORMALISER = "qwbatch-input/1 384-3072px 10000000B"

_T = TypeVar("_T")


@dataclass(slots=True)
class InputStats:
    """What a stage did. ``fetched`` counts distinct URIs read from their source."""

    fetched: int = 0
    contents: int = 0
    staged: int = 0
    reused: int = 0
    changed: int = 0
    refused: int = 0


class InputStage:
    """Resolves input URIs to :class:`~qwbatch.manifest.InputDigest`, staging what is sent.

    Call it with a URI (the manifest reader does); :meth:`prefetch` resolves many at once in
    ``concurrency`` threads (the reader calls it once per record batch), after which calls
    are answered from memory. ``store`` None checks inputs without staging them
    (``qwbatch validate``). Refusals raise :class:`~qwbatch.core.errors.PermanentError` subclasses
    whose message names the input; a source that keeps failing transiently after
    ``attempts`` tries is refused too, saying so (a rerun tries again).
    """

    def __init__(
        self,
        fetcher: InputFetcher,
        *,
        store: ObjectStore | None,
        limits: images.InputLimits = images.DEFAULT_INPUT_LIMITS,
        concurrency: int = 8,
        decode_pixels: int = 100_000_000,
        attempts: int = 3,
        backoff_s: float = 1.0,
        backoff_max_s: float = 10.0,
    ) -> None:
        self.fetcher = fetcher
        self.store = store
        self.limits = limits
        self.concurrency = max(1, concurrency)
        #: Bounds the pixels decoded at once by the ``concurrency`` threads (memory).
        self.pixels = PixelBudget(decode_pixels)
        self.stats = InputStats()
        self._attempts = attempts
        self._backoff = (backoff_s, backoff_max_s)
        self._lock = threading.Lock()
        #: Prefetched answers, handed over (and forgotten) on the call for their URI.
        self._ready: dict[str, InputDigest | QwBatchError] = {}
        #: sha256 of original bytes → the normalisation note, or why the bytes were refused.
        self._contents: dict[str, str | ImageError] = {}

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        manifest_dir: Path,
        store: ObjectStore | None,
        stage: bool = True,
    ) -> InputStage:
        """The stage for a run; ``stage=False`` reads ``store`` (outputs, catalog) but
        writes nothing to it."""
        return cls(
            InputFetcher.from_settings(settings, manifest_dir=manifest_dir, store=store),
            store=store if stage else None,
            concurrency=settings.input_fetch_concurrency,
            decode_pixels=settings.input_decode_pixels,
            backoff_s=settings.backoff_base_s,
            backoff_max_s=settings.backoff_max_s,
        )

    def close(self) -> None:
        self.fetcher.close()

    def __enter__(self) -> InputStage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the resolver --------------------------------------------------------------------

    def __call__(self, uri: str) -> InputDigest:
        """The digest of ``uri``'s original bytes, its input staged; PermanentError if refused."""
        with self._lock:
            ready = self._ready.pop(uri, None)
        outcome = ready if ready is not None else self._outcome(uri)
        if isinstance(outcome, QwBatchError):
            raise outcome
        return outcome

    def prefetch(self, uris: Iterable[str]) -> None:
        """Resolve the distinct ``uris`` concurrently, ready for the calls that follow."""
        with self._lock:
            pending = [u for u in dict.fromkeys(uris) if u not in self._ready]
        if not pending:
            return
        self.fetcher.prefetch_refs(pending)
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="qwbatch-input") as pool:
            for uri, outcome in zip(pending, pool.map(self._outcome, pending), strict=True):
                with self._lock:
                    self._ready[uri] = outcome

    # -- steps ---------------------------------------------------------------------------

    def _outcome(self, uri: str) -> InputDigest | QwBatchError:
        """Fetch, hash, check and stage one URI; a refusal is returned, not raised."""
        name = f"input {display_uri(uri)!r}"
        try:
            fetched = self._retrying(lambda: self.fetcher.fetch(uri))
            with self._lock:
                self.stats.fetched += 1
            sha = hashlib.sha256(fetched.data).hexdigest()
            note = self._retrying(lambda: self._content(sha, fetched.data))
        except PermanentError as exc:
            with self._lock:
                self.stats.refused += 1
            return InputError(f"{name}: {exc.message}", code=exc.code)
        except TransientError as exc:
            with self._lock:
                self.stats.refused += 1
            return InputError(
                f"{name}: {exc.message} (still failing after {self._attempts} tries; "
                "a rerun tries again)"
            )
        via = f"from {display_uri(fetched.via)}" if fetched.via else ""
        return InputDigest(sha, "; ".join(part for part in (via, note) if part))

    def _content(self, sha: str, data: bytes) -> str:
        """The note for these bytes, normalising and staging them once per run."""
        with self._lock:
            known = self._contents.get(sha)
        if isinstance(known, ImageError):
            raise ImageError(known.message)
        if known is not None:
            return known
        try:
            note = self._stage(sha, data)
        except ImageError as exc:
            with self._lock:
                self._contents[sha] = exc
            raise
        with self._lock:
            if sha not in self._contents:
                self.stats.contents += 1
                self.stats.changed += bool(note)
            self._contents[sha] = note
        return note

    def _stage(self, sha: str, data: bytes) -> str:
        key = staged_key(sha)
        if self.store is not None:
            info = self.store.head(key)
            if info is not None and info.metadata.get("normaliser") == NORMALISER:
                with self._lock:
                    self.stats.reused += 1
                return info.metadata.get("changes", "")
        with self.pixels.hold(images.header_pixels(data)):
            image = images.normalise_input(data, self.limits)
        if self.store is not None:
            self.store.put(
                key, image.data, content_type=image.content_type, metadata=_metadata(sha, image)
            )
            with self._lock:
                self.stats.staged += 1
        return image.note

    def _retrying(self, call: Callable[[], _T]) -> _T:
        for attempt in stamina.retry_context(
            on=TransientError,
            attempts=self._attempts,
            timeout=None,
            wait_initial=self._backoff[0],
            wait_max=self._backoff[1],
            wait_jitter=self._backoff[0],
        ):
            with attempt:
                return call()
        raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover


class PixelBudget:
    """Pixels (width × height) that may be decoded at once across threads; a decode waits
    for room. One larger than the whole budget waits for all of it, and runs alone.

    After a large decode the C allocator is asked to hand freed memory back (glibc's
    ``malloc_trim``; elsewhere nothing): each thread has its own malloc arena, which keeps
    what a decode freed, so eight threads decoding one image after another would otherwise
    end up holding eight images' worth between them.
    """

    def __init__(self, pixels: int) -> None:
        self.total = max(1, pixels)
        self.free = self.total
        #: The most pixels held at once so far (for tests and measurements).
        self.peak = 0
        self._room = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        want = min(max(0, pixels), self.total)
        with self._room:
            self._room.wait_for(lambda: self.free >= want)
            self.free -= want
            self.peak = max(self.peak, self.total - self.free)
        try:
            yield
        finally:
            if want >= _TRIM_FROM_PIXELS:
                _trim_malloc()
            with self._room:
                self.free += want
                self._room.notify_all()


#: Decodes from this size (pixels) give their memory back to the system when they end.
_TRIM_FROM_PIXELS = 4_000_000


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


def _trim_malloc() -> None:
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _metadata(sha: str, image: images.NormalisedImage) -> dict[str, str]:
    return {
        "original-sha256": sha,
        "original-format": image.original_format,
        "original-width": str(image.original_width),
        "original-height": str(image.original_height),
        "sha256": images.sha256_hex(image.data),
        "format": image.format,
        "width": str(image.width),
        "height": str(image.height),
        "changes": image.note,
        "normaliser": NORMALISER,
    }


# --------------------------------------------------------------------------- shard side


class StagedInputs:
    """The engine's input loader: a staged input as the data URI that is sent.

    Reads ``DEST/inputs/…`` by the sha256 the plan recorded, so it needs nothing but the
    store. Concurrent requests for one input share one read, and recent inputs are kept (up
    to ``cache_bytes`` of data URI text) for the next request that edits the same image.
    """

    def __init__(self, store: ObjectStore, *, cache_bytes: int = 64 * 1024 * 1024) -> None:
        self.store = store
        self.cache_bytes = cache_bytes
        self.reads = 0
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._cached = 0
        self._pending: dict[str, asyncio.Future[str]] = {}

    async def __call__(self, uri: str, sha256: str) -> str:
        """The data URI for input ``uri`` whose original bytes have ``sha256``."""
        if sha256 in self._cache:
            self._cache.move_to_end(sha256)
            return self._cache[sha256]
        pending = self._pending.get(sha256)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending[sha256] = future
        try:
            text = await self._read(uri, sha256)
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # mark it retrieved: waiters re-raise it, if there are any
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            del self._pending[sha256]
        future.set_result(text)
        self._remember(sha256, text)
        return text

    async def _read(self, uri: str, sha256: str) -> str:
        async for attempt in stamina.retry_context(on=TransientError, attempts=3, timeout=None):
            with attempt:
                try:
                    data = await asyncio.to_thread(self.store.get, staged_key(sha256))
                except ObjectNotFoundError:
                    raise InputError(
                        f"input {display_uri(uri)!r} is not staged at "
                        f"{self.store.uri(staged_key(sha256))}; plan the run again"
                    ) from None
        self.reads += 1
        return images.data_uri(data)

    def _remember(self, sha256: str, text: str) -> None:
        if len(text) > self.cache_bytes:
            return
        self._cache[sha256] = text
        self._cached += len(text)
        while self._cached > self.cache_bytes:
            _, dropped = self._cache.popitem(last=False)
            self._cached -= len(dropped)
