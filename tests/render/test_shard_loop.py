"""The process's one shard loop: every calling thread's shard runs on the same loop."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from qwbatch.render import shard_loop


async def where(delay: float) -> tuple[int, str]:
    await asyncio.sleep(delay)
    return id(asyncio.get_running_loop()), threading.current_thread().name


def test_shards_from_many_threads_share_one_loop() -> None:
    with ThreadPoolExecutor(4) as pool:
        seen = list(pool.map(lambda i: shard_loop.run(where(0.05 * (i % 2))), range(8)))
    assert len(set(seen)) == 1
    assert seen[0][1] == "qwbatch-shards"


def test_errors_reach_the_caller() -> None:
    async def fails() -> None:
        raise ValueError("bad shard")

    with pytest.raises(ValueError, match="bad shard"):
        shard_loop.run(fails())


def test_a_shard_cannot_wait_for_the_loop_it_runs_on() -> None:
    async def nested() -> str:
        try:
            shard_loop.run(where(0))
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    assert "await instead" in shard_loop.run(nested())
