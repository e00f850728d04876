"""The local limiter's in-flight cap: callers wait for a slot without polling, across loops."""

from __future__ import annotations

import asyncio
import threading

from qwbatch.limits import LimitSpec, ModelLimiter


def spec(max_in_flight: int) -> LimitSpec:
    return LimitSpec(rps=1e6, max_in_flight=max_in_flight, ramp_s=0)


def test_the_cap_holds_across_two_event_loops_and_every_caller_gets_a_slot() -> None:
    limiter = ModelLimiter(spec(3))
    busy, peak, done = 0, 0, 0
    lock = threading.Lock()

    async def one() -> None:
        nonlocal busy, peak, done
        async with limiter.slot():
            with lock:
                busy += 1
                peak = max(peak, busy)
            await asyncio.sleep(0.01)
            with lock:
                busy -= 1
                done += 1

    async def many() -> None:
        await asyncio.gather(*(one() for _ in range(40)))

    threads = [threading.Thread(target=asyncio.run, args=(many(),)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert (done, peak) == (80, 3)


def test_a_cancelled_waiter_passes_its_slot_on() -> None:
    limiter = ModelLimiter(spec(1))

    async def scenario() -> list[str]:
        order: list[str] = []
        release = asyncio.Event()

        async def holder() -> None:
            async with limiter.slot():
                order.append("holder")
                await release.wait()

        async def waiter(name: str) -> None:
            async with limiter.slot():
                order.append(name)

        first = asyncio.create_task(holder())
        await asyncio.sleep(0)
        doomed = asyncio.create_task(waiter("doomed"))
        patient = asyncio.create_task(waiter("patient"))
        await asyncio.sleep(0.01)  # both wait for the one slot
        release.set()
        doomed.cancel()  # cancelled as the slot it would get comes free
        await asyncio.wait_for(asyncio.gather(first, patient), timeout=5)
        return order

    assert asyncio.run(scenario()) == ["holder", "patient"]
