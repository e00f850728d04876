"""Shard files written as the plan streams: one JSON line per request, gzip'd, in order.

A :class:`ShardWriter` takes the encoded lines of distinct requests in manifest order (the
line format is ``qwbatch.plan``'s ``_encode_item``) and writes shard ``i`` as soon as it
holds ``size`` lines, so memory holds one shard of lines, not the plan. Writes run on a few
worker threads (an S3 put is a round trip), at most ``WRITES_AHEAD`` shards queued, or in
the calling thread (``threads=0``). Use as a context manager: leaving it writes the last
shard and waits for every write, raising the first write's error. ``store`` None counts
shards without writing (a dry run).
"""

from __future__ import annotations

import gzip
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

from qwbatch.storage import ObjectStore

#: gzip level of shard files: 1 is several times faster than 5 and ~10% larger.
GZIP_LEVEL = 1


def shard_bytes(lines: Iterable[str]) -> bytes:
    """A shard file's bytes from its JSON lines (without newlines)."""
    return gzip.compress(("\n".join(lines) + "\n").encode("utf-8"), GZIP_LEVEL)


#: Writer threads for a remote store (a put is a round trip; threads overlap them).
WRITERS = 4


class ShardWriter:
    """Cut encoded request lines into shards of ``size`` and write each as it fills.

    ``threads`` 0 writes in the calling thread: right for a local store, whose put is a
    few system calls, when the caller is busy in Python (a writer thread would wait for the
    GIL at each call, up to the 5 ms switch interval every time).
    """

    WRITES_AHEAD = 8

    def __init__(
        self,
        store: ObjectStore | None,
        size: int,
        key_of: Callable[[int], str],
        *,
        threads: int = WRITERS,
    ) -> None:
        if size < 1:
            raise ValueError(f"shard size must be at least 1, got {size}")
        self._store = store
        self._size = size
        self._key_of = key_of
        self._lines: list[str] = []
        self.shards = 0
        self.shard_keys: list[str] = []
        self._pool = (
            ThreadPoolExecutor(threads, thread_name_prefix="qwbatch-shards")
            if store is not None and threads > 0
            else None
        )
        self._writes: deque[Future[None]] = deque()

    @property
    def size(self) -> int:
        return self._size

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self.flush()
            while self._writes:
                self._writes.popleft().result()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)

    def add(self, lines: Iterable[str]) -> None:
        """Take the next requests' lines, in order."""
        pending = self._lines
        size = self._size
        for line in lines:
            pending.append(line)
            if len(pending) >= size:
                self.flush()
                pending = self._lines

    def flush(self) -> None:
        """Write the shard being filled, if it holds anything."""
        if not self._lines:
            return
        key = self._key_of(self.shards)
        self.shard_keys.append(key)
        if self._pool is not None:
            while len(self._writes) >= self.WRITES_AHEAD:
                self._writes.popleft().result()
            self._writes.append(self._pool.submit(self._put, key, self._lines))
        elif self._store is not None:
            self._put(key, self._lines)
        self.shards += 1
        self._lines = []

    def _put(self, key: str, lines: list[str]) -> None:
        assert self._store is not None
        # Not fsynced one by one: the plan makes them durable together (make_durable)
        # before it is saved, and nothing reads a shard before that.
        self._store.put(key, shard_bytes(lines), content_type="application/gzip", durable=False)
