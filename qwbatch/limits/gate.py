"""Waiting across event loops: a first-come-first-served :class:`Gate` and :class:`TokenPool`.

Shards run as Prefect tasks on a thread pool, each thread with its own event loop, and all
of them share one limiter per model. asyncio's primitives belong to one loop, so these keep
their state under a ``threading.Lock`` and wake a waiter on its own loop with
``call_soon_threadsafe``. A waiter that is cancelled while being woken hands what it was
given back, so neither a slot nor a token leaks.

Example::

    gate = Gate(4)
    await gate.acquire()
    try:
        ...  # at most 4 of these run at once, across every thread
    finally:
        gate.release()
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(eq=False, slots=True)
class _Waiter:
    loop: asyncio.AbstractEventLoop
    #: Resolved with what the waiter is given (a token's spend time), or None.
    future: asyncio.Future[float | None]


class _Queue:
    """FIFO waiters and the hand-off that wakes them; subclasses decide who may go."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: deque[_Waiter] = deque()

    @property
    def waiting(self) -> int:
        """Callers waiting right now."""
        return len(self._waiters)

    async def _wait(self, waiter: _Waiter, give_back: Callable[[], None]) -> None:
        """Wait until woken; if cancelled after being chosen, return the grant."""
        try:
            await waiter.future
        except BaseException:
            with self._lock:
                try:
                    self._waiters.remove(waiter)
                    chosen = False
                except ValueError:
                    chosen = True
            # Chosen and delivered: we own the grant. Chosen but not yet delivered: the
            # delivery finds the future cancelled and gives the grant back itself.
            if chosen and waiter.future.done() and not waiter.future.cancelled():
                give_back()
            raise

    @staticmethod
    def _wake(waiter: _Waiter, give_back: Callable[[], None], value: float | None = None) -> None:
        """Deliver a grant to ``waiter`` on its loop (call outside the lock)."""

        def deliver() -> None:
            if waiter.future.done():
                give_back()
            else:
                waiter.future.set_result(value)

        try:
            waiter.loop.call_soon_threadsafe(deliver)
        except RuntimeError:  # its loop is closed: nobody will take the grant
            give_back()


class Gate(_Queue):
    """A counting semaphore for threads and event loops alike, with a capacity that can move.

    ``capacity`` may be lowered below ``in_use``; the slots in use then drain before anyone
    new gets in. Limits shared through Prefect raise and lower it as slots are leased.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self._capacity = capacity
        self._in_use = 0
        #: Called (outside the lock) when a caller starts waiting: a shared limit leases more.
        self.on_wait: Callable[[], None] | None = None

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def in_use(self) -> int:
        return self._in_use

    async def acquire(self) -> None:
        """Wait for a slot; first come, first served."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._waiters and self._in_use < self._capacity:
                self._in_use += 1
                return
            waiter = _Waiter(loop, loop.create_future())
            self._waiters.append(waiter)
        if self.on_wait is not None:
            self.on_wait()
        await self._wait(waiter, self.release)

    def release(self) -> None:
        with self._lock:
            self._in_use -= 1
            chosen = self._choose_locked()
        for waiter in chosen:
            self._wake(waiter, self.release)

    def resize(self, capacity: int) -> None:
        """Set the capacity; waiters that now fit are let in."""
        with self._lock:
            self._capacity = capacity
            chosen = self._choose_locked()
        for waiter in chosen:
            self._wake(waiter, self.release)

    def grow(self, slots: int = 1) -> None:
        with self._lock:
            self._capacity += slots
            chosen = self._choose_locked()
        for waiter in chosen:
            self._wake(waiter, self.release)

    def shrink_idle(self, slots: int) -> bool:
        """Remove ``slots`` of capacity if that many are unused right now; whether it did."""
        with self._lock:
            if self._capacity - self._in_use < slots:
                return False
            self._capacity -= slots
            return True

    def _choose_locked(self) -> list[_Waiter]:
        chosen = []
        while self._waiters and self._in_use < self._capacity:
            chosen.append(self._waiters.popleft())
            self._in_use += 1
        return chosen


class TokenPool(_Queue):
    """Tokens that are spent, not returned: rate tokens leased from a shared limit.

    A lease *drips*: its tokens become spendable one every ``interval`` seconds from the
    moment it was granted, the pace at which the shared limit refills, so a lease granted
    to one worker goes out as the provider's own bucket refills and not in a clump. A lease
    may also expire (``clock`` time): a token not spent by then is dropped, because it would
    go out late, bunched with other workers' sends. While ``opened`` (no shared limit, or it
    failed) :meth:`reserve` never waits.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self._leases: deque[_Lease] = deque()
        self._opened = False
        #: Called (outside the lock) after a take leaves the pool low or a caller waits.
        self.on_low: Callable[[], None] | None = None
        #: Below this many tokens the pool asks for more.
        self.low_water = 1
        #: Tokens dropped unspent: expired, or drained after a 429.
        self.dropped = 0

    @property
    def tokens(self) -> int:
        with self._lock:
            return self._count_locked()

    @property
    def opened(self) -> bool:
        return self._opened

    async def reserve(self) -> float:
        """Take one token, waiting for a lease when there is none; the ``clock`` time from
        which it may be spent (now or in the past when the pool is open)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._opened:
                return self._clock()
            at = None if self._waiters else self._take_locked()
            if at is not None:
                low = self._count_locked() < self.low_water
                waiter = None
            else:
                waiter = _Waiter(loop, loop.create_future())
                self._waiters.append(waiter)
                low = True
        if low and self.on_low is not None:
            self.on_low()
        if waiter is None:
            return at if at is not None else self._clock()
        await self._wait(waiter, self._give_back)
        result = waiter.future.result()
        return result if result is not None else self._clock()

    async def take(self) -> None:
        """Take one token and wait until it may be spent."""
        wait = await self.reserve() - self._clock()
        if wait > 0:
            await asyncio.sleep(wait)

    def put(self, tokens: int, *, interval: float = 0.0, expires_at: float = float("inf")) -> None:
        """Add a lease of ``tokens``, one spendable every ``interval`` seconds from now."""
        with self._lock:
            self._leases.append(_Lease(tokens, self._clock(), interval, expires_at))
            chosen = []
            while self._waiters and (at := self._take_locked()) is not None:
                chosen.append((self._waiters.popleft(), at))
        for waiter, at in chosen:
            self._wake(waiter, self._give_back, at)

    def drain(self) -> int:
        """Drop every token in the pool; how many were dropped."""
        with self._lock:
            dropped = self._count_locked()
            self._leases.clear()
            self.dropped += dropped
        return dropped

    def open(self) -> None:
        """Stop counting: every waiter goes, and so does every later caller."""
        with self._lock:
            self._opened = True
            chosen = list(self._waiters)
            self._waiters.clear()
        for waiter in chosen:
            self._wake(waiter, lambda: None)

    def _count_locked(self) -> int:
        self._expire_locked()
        return sum(lease.left for lease in self._leases)

    def _take_locked(self) -> float | None:
        self._expire_locked()
        if not self._leases:
            return None
        lease = self._leases[0]
        at = lease.next_at
        lease.left -= 1
        lease.next_at += lease.interval
        if lease.left <= 0:
            self._leases.popleft()
        return at

    def _expire_locked(self) -> None:
        now = self._clock()
        while self._leases and self._leases[0].expires_at <= now:
            self.dropped += self._leases.popleft().left

    def _give_back(self) -> None:
        self.put(1)


@dataclass(eq=False, slots=True)
class _Lease:
    left: int
    next_at: float
    interval: float
    expires_at: float
