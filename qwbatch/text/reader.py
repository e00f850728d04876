"""TextReader: OCR in worker processes, so reading never holds up the event loop.

Reading one image costs ~0.15–0.5 s of CPU (its size), far more than an event loop can
spare while it keeps a run at the provider's rate limit. The reader runs
:func:`qwbatch.text.ocr.read_png` in a :class:`~concurrent.futures.ProcessPoolExecutor`
(spawn start method: no forked copy of the loop, its threads or its sockets) whose
initializer loads the engine once per worker, so no image pays the model's load time.

Example::

    async with TextReader(workers=2) as reader:
        text = await reader.read(png_bytes)
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType

from qwbatch.core.errors import TextReadError
from qwbatch.text import ocr


def default_workers() -> int:
    """Worker processes by default: one per core, at most two.

    On the two cores a run usually gets, two readers keep up with 4 requests per second of
    512² images (~6 images/s per core) and leave the event loop its share.
    """
    return max(1, min(2, os.cpu_count() or 1))


class TextReader:
    """Reads the text on images in ``workers`` processes; :meth:`start` before, :meth:`close`
    after (or ``async with``)."""

    def __init__(self, *, workers: int | None = None) -> None:
        self.workers = workers if workers is not None else default_workers()
        self._pool: ProcessPoolExecutor | None = None
        #: Images read so far.
        self.images = 0

    def start(self) -> None:
        """Start the worker processes (each loads the engine once)."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=ocr.load,
            )

    async def read(self, data: bytes) -> str:
        """The text on the encoded image ``data``, one line per text box.

        TextReadError when a worker died (out of memory, killed); ImageError when the bytes
        are not an image.
        """
        self.start()
        assert self._pool is not None
        try:
            text = await asyncio.get_running_loop().run_in_executor(self._pool, ocr.read_png, data)
        except BrokenProcessPool as exc:
            self._pool = None  # the next read starts a fresh pool
            raise TextReadError(f"an OCR worker died: {exc}") from exc
        self.images += 1
        return text

    def close(self) -> None:
        """Stop the worker processes."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    async def __aenter__(self) -> TextReader:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.close)
