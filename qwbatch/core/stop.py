"""Clean stop: Ctrl-C (SIGINT) or SIGTERM asks a run to stop; nothing paid for is lost.

A stop is a flag, not an exception. Once it is set, shards start no new request; a request
whose provider call is under way (a sync call, or an async submission whose task id is not
yet journaled) and one whose image is being stored run to the end; a request that is only
waiting (for a limiter slot, a retry, or an async task already journaled) is abandoned and
left to a resume, which polls its task id instead of paying again. Each shard then writes
its catalog part, and the run ends with a summary that counts what is left.

A second signal ends the process at once, exit 128 + its number, with one line on stderr
saying how to resume: a person pressing Ctrl-C twice means it, and Python's own exit would
wait for the shards' threads. That is a crash as far as the journal is concerned, and the
journal is made for crashes (:mod:`qwbatch.render.journal`): every call was journaled before
it was sent, so the next run polls accepted async tasks and harvests answered calls instead
of paying again; only a call cut on the wire is unknown, and is counted as possibly billed.
Callbacks given to :meth:`StopSignal.at_hard_exit` run first (a server child to end).

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
from collections.abc import Callable, Iterator, Mapping
from types import FrameType
from typing import Any


class StopSignal:
    """A thread-safe stop flag with the reason it was set (``"SIGINT"``, ``"SIGTERM"`` …)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None
        self.signum: int | None = None
        #: How to finish the run, for the line a second signal prints (set once known).
        self.resume_hint: str | None = None
        self._at_hard_exit: list[Callable[[], object]] = []
        self._depth = 0

    def at_hard_exit(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` (quick, never raising) before a second signal ends the process."""
        self._at_hard_exit.append(callback)

    def hard_exit(self, signum: int) -> None:
        """End the process now with 128 + ``signum``, after the hard-exit callbacks."""
        for callback in self._at_hard_exit:
            with contextlib.suppress(Exception):
                callback()
        hint = self.resume_hint or "run the same command again to resume"
        name = signal.Signals(signum).name
        with contextlib.suppress(OSError):
            os.write(2, f"qwbatch: stopped at once by a second {name}; {hint}\n".encode())
        os._exit(128 + signum)

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
        Nested (the CLI handles signals around the flow, which handles them too), the inner
        block installs its handlers again (Prefect's may sit in between) but keeps the flag:
        a stop asked before the flow began still stops it.
        """
        if self._depth == 0:
            self.clear()
        self._depth += 1
        previous: dict[int, object] = {}

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if self.is_set():
                self.hard_exit(signum)  # a second signal: the user means it
            self.set(signal.Signals(signum).name, signum)

        if threading.current_thread() is threading.main_thread():
            for signum in signums:
                previous[signum] = signal.signal(signum, on_signal)
        try:
            yield self
        finally:
            self._depth -= 1
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
