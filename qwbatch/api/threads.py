"""Calling the library from inside a running event loop (a Jupyter cell, an async app).

The runner starts event loops of its own (``asyncio.run``, the shard loop), which a thread
already running a loop cannot do. :func:`off_the_loop` runs such a call in a new thread
instead, and waits for it; with no loop running it calls straight through. Interrupting the
wait (a notebook's stop button: KeyboardInterrupt) asks the work to stop cleanly through
:data:`qwbatch.core.stop.STOP`, as SIGINT would, waits for it, then re-raises.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

from qwbatch.core.stop import STOP

T = TypeVar("T")


def loop_running() -> bool:
    """Whether this thread is running an asyncio event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def off_the_loop(call: Callable[[], T]) -> T:
    """``call()``, in a thread of its own when this thread runs an event loop."""
    if not loop_running():
        return call()
    outcome: list[T] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed to the caller's thread, re-raised there
            failure.append(exc)

    worker = threading.Thread(target=work, name="qwbatch-api", daemon=True)
    worker.start()
    try:
        # join() with a timeout so that KeyboardInterrupt reaches this thread promptly.
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:
        STOP.set("SIGINT")
        worker.join()
        raise
    if failure:
        raise failure[0]
    return outcome[0]
