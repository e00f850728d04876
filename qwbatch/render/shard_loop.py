"""One event loop per process for every shard the process renders.

Prefect runs each shard task on a thread of its own. If each of those threads ran its own
event loop (``asyncio.run``), a process rendering four shards at once would hold four loops
and four default executors (24 threads on two cores), all contending for the GIL: every
socket call a loop makes releases the GIL, and getting it back from a busy thread can take
the whole switch interval (5 ms), for every send, poll and ``getpeername`` of every request
(the convoy effect: in a py-spy profile of ``bench/bench_overhead.py`` the shard threads
spent most of their time waiting to get the GIL back after such calls). So shard coroutines
all run on one loop, in a daemon thread started on first use, with one executor for
blocking store calls and image checks; the calling threads only wait for their results.

Example::

    result = shard_loop.run(render_shard_async(key, ...))
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

#: Worker threads of the shared loop's executor (store calls, image checks, journal
#: writes). Enough for S3 uploads of several shards at once; few enough to keep the GIL calm.
EXECUTOR_THREADS = 12

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the process's shard loop; its result (or its exception).

    Blocks the calling thread, which must not be the loop's own. An interrupt of the waiting
    thread cancels the coroutine.
    """
    loop = _shared_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coro.close()
        raise RuntimeError("shard_loop.run called from the shard loop itself; await instead")
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


def _shared_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            loop.set_default_executor(
                ThreadPoolExecutor(EXECUTOR_THREADS, thread_name_prefix="qwbatch-io")
            )
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            threading.Thread(target=serve, name="qwbatch-shards", daemon=True).start()
            ready.wait()
            _loop = loop
        return _loop


def _forget_in_child() -> None:
    """A forked child has no loop thread: it starts its own on first use."""
    global _loop, _lock
    _loop = None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)
