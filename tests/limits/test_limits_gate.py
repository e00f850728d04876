"""Gate and TokenPool: waiting across threads and event loops, first come first served."""

from __future__ import annotations

import asyncio
import threading

import pytest

from qwbatch.limits.gate import Gate, TokenPool


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def run_in_threads(count: int, target) -> list[object]:
    """Run ``asyncio.run(target(i))`` on ``count`` threads at once; their results."""
    results: list[object] = [None] * count
    errors: list[BaseException] = []

    def go(i: int) -> None:
        try:
            results[i] = asyncio.run(target(i))
        except BaseException as exc:  # surface failures of other threads in the test
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    return results


def test_gate_never_lets_more_than_capacity_in_across_loops() -> None:
    gate = Gate(3)
    lock = threading.Lock()
    inside = 0
    peak = 0

    async def user(_: int) -> int:
        nonlocal inside, peak
        for _ in range(20):
            await gate.acquire()
            with lock:
                inside += 1
                peak = max(peak, inside)
            await asyncio.sleep(0.001)
            with lock:
                inside -= 1
            gate.release()
        return 0

    async def many(i: int) -> int:
        await asyncio.gather(*(user(i) for _ in range(5)))
        return i

    run_in_threads(4, many)
    assert peak == 3
    assert gate.in_use == 0
    assert gate.waiting == 0


@pytest.mark.anyio
async def test_gate_serves_waiters_in_arrival_order() -> None:
    gate = Gate(1)
    await gate.acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await gate.acquire()
        order.append(i)
        gate.release()

    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(waiter(i)))
        await asyncio.sleep(0)  # let it queue before the next one
    gate.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


@pytest.mark.anyio
async def test_a_cancelled_waiter_does_not_keep_the_slot() -> None:
    gate = Gate(1)
    await gate.acquire()
    doomed = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    assert gate.waiting == 1
    # Chosen and then cancelled before it ran: the slot must pass on, not vanish.
    gate.release()
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    await asyncio.sleep(0)
    assert gate.in_use == 0
    await asyncio.wait_for(gate.acquire(), 1)
    assert gate.in_use == 1


@pytest.mark.anyio
async def test_gate_capacity_can_grow_and_shrink_only_what_is_idle() -> None:
    gate = Gate(0)
    waiting = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    assert gate.waiting == 1
    gate.grow(2)
    await asyncio.wait_for(waiting, 1)
    assert (gate.in_use, gate.capacity) == (1, 2)
    assert not gate.shrink_idle(2)  # one of the two is in use
    assert gate.shrink_idle(1)  # the unused one goes
    assert gate.capacity == 1
    gate.resize(0)  # below what is in use: it drains
    gate.release()
    assert (gate.in_use, gate.capacity) == (0, 0)


@pytest.mark.anyio
async def test_gate_reports_waiting_callers() -> None:
    gate = Gate(0)
    calls: list[int] = []
    gate.on_wait = lambda: calls.append(gate.waiting)
    task = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    assert calls == [1]
    gate.grow()
    await task


def test_token_pool_hands_each_token_to_exactly_one_taker_across_loops() -> None:
    pool = TokenPool()
    pool.low_water = 2
    low: list[int] = []
    pool.on_low = lambda: low.append(1)
    taken = 0
    lock = threading.Lock()

    async def taker(_: int) -> int:
        nonlocal taken
        for _ in range(10):
            await pool.take()
            with lock:
                taken += 1
        return 0

    feeder_done = threading.Event()

    def feed() -> None:
        for _ in range(30):
            pool.put(1)
            threading.Event().wait(0.002)
        feeder_done.set()

    feeder = threading.Thread(target=feed)
    feeder.start()
    run_in_threads(3, taker)
    feeder.join()
    assert taken == 30
    assert pool.tokens == 0
    assert low  # takers asked for more when the pool ran low


@pytest.mark.anyio
async def test_an_opened_pool_never_waits_and_frees_its_waiters() -> None:
    pool = TokenPool()
    waiting = asyncio.create_task(pool.take())
    await asyncio.sleep(0)
    assert pool.waiting == 1
    pool.open()
    await asyncio.wait_for(waiting, 1)
    await asyncio.wait_for(pool.take(), 1)
    assert pool.opened


@pytest.mark.anyio
async def test_a_cancelled_taker_gives_its_token_back() -> None:
    pool = TokenPool()
    doomed = asyncio.create_task(pool.take())
    await asyncio.sleep(0)
    pool.put(1)  # chosen...
    doomed.cancel()  # ...and cancelled before it ran
    with pytest.raises(asyncio.CancelledError):
        await doomed
    await asyncio.sleep(0)
    assert pool.tokens == 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.anyio
async def test_a_lease_drips_at_its_interval_and_expires_unspent() -> None:
    clock = FakeClock()
    pool = TokenPool(clock=clock)
    pool.put(3, interval=0.5, expires_at=2.0)
    assert [await pool.reserve(), await pool.reserve()] == [0.0, 0.5]
    assert pool.tokens == 1
    clock.now = 2.0  # the third token was never taken: it goes
    assert pool.tokens == 0
    assert pool.dropped == 1


@pytest.mark.anyio
async def test_drain_drops_every_token() -> None:
    pool = TokenPool()
    pool.put(4)
    assert pool.drain() == 4
    assert (pool.tokens, pool.dropped) == (0, 4)
