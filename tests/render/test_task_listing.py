"""The task listing (``GET /tasks``) in the simulator and the client, and born-expired URLs:
the parts that let a lost async submission be found again and an expired result be told
apart from a failed one."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from support import KEY, dashscope_provider, make_request

from qwbatch.core.errors import ResultExpiredError
from qwbatch.core.types import RenderRequest


def request(prompt: str, model: str = "qwen-image-plus") -> RenderRequest:
    return make_request("r", prompt, model=model, size=None)


def test_listing_filters_by_model_and_time_and_pages(sim) -> None:
    sim.configure(fast=True)

    async def go() -> None:
        async with dashscope_provider(sim) as p:
            started = time.time()
            ids = [await p.submit_task(request(f"listed {i}")) for i in range(3)]
            await p.submit_task(request("other model", model="qwen-image"))
            listed = await p.list_tasks("qwen-image-plus", started - 1, time.time() + 1)
            assert sorted(t.task_id for t in listed) == sorted(ids)
            assert all(t.submitted_at and started - 1 <= t.submitted_at for t in listed)
            assert await p.list_tasks("qwen-image-plus", started - 60, started - 30) == []
            result = await p.wait_task(ids[0])
            assert result.orig_prompt == "listed 0"

    asyncio.run(go())
    with httpx.Client(base_url=sim.base_url, headers={"Authorization": f"Bearer {KEY}"}) as c:
        page = c.get("/tasks", params={"page_size": 2, "page_no": 2}).json()
        assert (page["total"], page["total_page"], len(page["data"])) == (4, 2, 2)
        bad = c.get("/tasks", params={"start_time": "yesterday"})
        assert (bad.status_code, bad.json()["code"]) == (400, "InvalidParameter")


@pytest.mark.parametrize("model", ["qwen-image-2.0", "qwen-image-plus"])
def test_a_url_born_expired_is_billed_and_reads_as_expired(sim, model: str) -> None:
    sim.configure(fast=True, expired_url_rate=1.0)

    async def go() -> None:
        async with dashscope_provider(sim) as p:
            if model == "qwen-image-plus":
                result = await p.wait_task(await p.submit_task(request("late", model)))
            else:
                result = await p.generate(request("late", model))
            with pytest.raises(ResultExpiredError):
                await p.download(result.images[0].url)

    asyncio.run(go())
    assert sim.ledger()["billed_images"] == 1
