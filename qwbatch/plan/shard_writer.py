"""Shard files written as the plan streams: one JSON line per request, zstd'd, in order.

A :class:`ShardWriter` takes the encoded lines of distinct requests in manifest order (the
line format is ``qwbatch.plan.shards``' ``encode_line``, each line ending with a newline) as Arrow
string arrays, and writes shard ``i`` as soon as it holds ``size`` lines: a shard's bytes
are a slice of the array's data, compressed (``qwbatch.plan.shard_codec``), with no Python string
per line. Memory holds one batch of lines and the shard being filled, not the plan. Writes
run on a few worker threads (an S3 put is a round trip), at most ``WRITES_AHEAD`` shards
queued, or in the calling thread (``threads=0``). Use as a context manager: leaving it writes
the last shard and waits for every write, raising the first write's error. ``store`` None
counts shards without writing (a dry run).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

import pyarrow as pa

from qwbatch.core.arrow_text import text_of
from qwbatch.plan import shard_codec
from qwbatch.storage.stores import ObjectStore

#: Writer threads for a remote store (a put is a round trip; threads overlap them).
WRITERS = 4


class ShardWriter:
    """Cut encoded request lines into shards of ``size`` and write each as it fills.

    ``threads`` 0 writes in the calling thread: right for a local store, whose put is a
    few system calls, when the caller is busy in Python (a writer thread would wait for the
    GIL at each call, up to the 5 ms switch interval every time). ``first_index`` numbers the
    first shard (the second process of a split plan starts past the first's shards).
    """

    WRITES_AHEAD = 8

    def __init__(
        self,
        store: ObjectStore | None,
        size: int,
        key_of: Callable[[int], str],
        *,
        threads: int = WRITERS,
        first_index: int = 0,
    ) -> None:
        if size < 1:
            raise ValueError(f"shard size must be at least 1, got {size}")
        self._store = store
        self._size = size
        self._key_of = key_of
        self._first = first_index
        #: The shard being filled: its text in pieces, and how many lines they hold.
        self._pieces: list[bytes | pa.Buffer] = []
        self._count = 0
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

    def add(self, lines: pa.Array) -> None:
        """Take the next requests' lines (a string array, each line ending with a newline),
        in order."""
        start, total = 0, len(lines)
        while start < total:
            piece = lines.slice(start, self._size - self._count)
            start += len(piece)
            self._count += len(piece)
            if self._count < self._size:
                # A shard left unfilled keeps a copy of its lines, not the whole batch's.
                self._pieces.append(text_of(piece).to_pybytes())
                break
            self._pieces.append(text_of(piece))
            self.flush()

    @property
    def counts_only(self) -> bool:
        """True when nothing is written (a dry run): :meth:`add_count` then does for
        :meth:`add`, and the lines need not be built."""
        return self._store is None

    def add_count(self, count: int) -> None:
        """Count the next ``count`` requests into shards without their lines (a writer
        without a store: the shards and their keys come out as :meth:`add`'s would)."""
        if self._store is not None:
            raise ValueError("a writer with a store needs the lines")
        while count:
            taken = min(count, self._size - self._count)
            count -= taken
            self._count += taken
            if self._count == self._size:
                self.flush()

    def flush(self) -> None:
        """Write the shard being filled, if it holds anything."""
        if not self._count:
            return
        key = self._key_of(self._first + self.shards)
        self.shard_keys.append(key)
        if self._store is not None:
            pieces = self._pieces
            data = shard_codec.compress(pieces[0] if len(pieces) == 1 else b"".join(pieces))
            if self._pool is not None:
                while len(self._writes) >= self.WRITES_AHEAD:
                    self._writes.popleft().result()
                self._writes.append(self._pool.submit(self._put, key, data))
            else:
                self._put(key, data)
        self.shards += 1
        self._pieces = []
        self._count = 0

    def _put(self, key: str, data: bytes) -> None:
        assert self._store is not None
        # Not fsynced one by one: the plan makes them durable together (make_durable)
        # before it is saved, and nothing reads a shard before that.
        self._store.put(key, data, content_type=shard_codec.CONTENT_TYPE, durable=False)
