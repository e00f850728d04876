"""Clean stop: Ctrl-C (SIGINT) or SIGTERM asks a run to stop; nothing paid for is lost.

A stop is a flag, not an exception. Once it is set, shards start no new request; a request
whose provider call is under way (a sync call, or an async submission whose task id is not
yet journaled) and one whose image is being stored run to the end; a request that is only
waiting (for a limiter slot, a retry, or an async task already journaled) is abandoned and
left to a resume, which polls its task id instead of paying again. Each shard then writes
its catalog part, and the run ends with a summary that counts what is left.

A second signal stops at once: SIGINT raises KeyboardInterrupt, SIGTERM ends the process.

Example::

    with STOP.handling(signal.SIGINT, signal.SIGTERM):
        run_the_shards()          # each engine checks STOP between steps
    if STOP.is_set():
        print(f"stopped by {STOP.reason}")
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Iterator, Mapping
from types import FrameType
from typing import Any


class StopSignal:
    """A thread-safe stop flag with the reason it was set (``"SIGINT"``, ``"SIGTERM"`` …)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None
        self.signum: int | None = None

    def set(self, reason: str = "stop", signum: int | None = None) -> None:
        if not self._event.is_set():
            self.reason, self.signum = reason, signum
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def clear(self) -> None:
        self._event.clear()
        self.reason = self.signum = None

    def exit_code(self) -> int:
        """The shell's convention for a process stopped by a signal: 128 + its number."""
        return 128 + self.signum if self.signum else 1

    @contextlib.contextmanager
    def handling(self, *signums: int) -> Iterator[StopSignal]:
        """Clear the flag, and for the block let ``signums`` set it instead of killing us.

        Only the main thread can install handlers; elsewhere (a Prefect worker thread) this
        is a plain block and the process keeps its own handlers. Handlers are restored after.
        """
        self.clear()
        previous: dict[int, object] = {}

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if self.is_set():
                # A second signal: the user means it. Stop now, the default way.
                signal.signal(signum, signal.SIG_DFL)
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                os.kill(os.getpid(), signum)
                return
            self.set(signal.Signals(signum).name, signum)

        if threading.current_thread() is threading.main_thread():
            for signum in signums:
                previous[signum] = signal.signal(signum, on_signal)
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)  # type: ignore[arg-type]  # getsignal's union


class Guard:
    """Marks the steps of one request that a stop must not cut (re-entrant).

    ::

        with guard():          # a call on the wire, a harvest
            ...
    """

    __slots__ = ("depth",)

    def __init__(self) -> None:
        self.depth = 0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1


async def cancel_when_stopped(
    stop: StopSignal, guards: Mapping[asyncio.Task[Any], Guard], tick_s: float = 0.05
) -> None:
    """Once ``stop`` is set, cancel each task of ``guards`` the moment it is outside its guard.

    Runs until cancelled itself. The flag is set from a signal handler on another thread,
    so it is polled every ``tick_s`` seconds.
    """
    while not stop.is_set():  # noqa: ASYNC110  (a threading flag: nothing to await)
        await asyncio.sleep(tick_s)
    while True:
        for task, guard in list(guards.items()):
            if not task.done() and guard.depth == 0:
                task.cancel()
        await asyncio.sleep(tick_s)


#: The process-wide stop flag the CLI and flows set and every engine of the process reads.
STOP = StopSignal()
