"""Benchmark: what the journal costs a shard, measured side by side in one process.

Renders the same shard of requests against the simulator (fast images, a fixed provider
latency) into a fresh local folder, once with no journal and once with the run journal in
the store, alternating, and prints the median wall time of each, their ratio, and how many
journal objects group commit wrote for how many entries.

    .venv/bin/python bench/bench_journal.py                  # 200 requests, 3 rounds
    .venv/bin/python bench/bench_journal.py --requests 400 --latency 0.2 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.1, help="provider latency, seconds")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from bench.common import BENCH_KEY, simulator_process
    from qwbatch.core.keys import RequestFields, request_key
    from qwbatch.core.model_table import ModelTable
    from qwbatch.core.settings import Settings
    from qwbatch.core.types import PlanItem, RenderRequest
    from qwbatch.providers.dashscope import DashScopeProvider
    from qwbatch.render.engine import Engine
    from qwbatch.render.journal import Journal, StoreJournal
    from qwbatch.storage.stores import LocalStore

    table = ModelTable.load()

    def items(round_no: int) -> list[PlanItem]:
        out = []
        for i in range(args.requests):
            model = "qwen-image-plus" if i % 2 else "qwen-image-2.0"
            size = "1328*1328" if i % 2 else "512*512"
            prompt = f"bench {round_no}-{i}"
            key = request_key(
                RequestFields(model=model, mode="generate", prompt=prompt, size=size, seed=i)
            )
            out.append(
                PlanItem(
                    RenderRequest(
                        row_id=str(i),
                        row_number=i,
                        request_key=key,
                        model=model,
                        mode="generate",
                        prompt=prompt,
                        size=size,
                        seed=i,
                    )
                )
            )
        return out

    async def render(
        settings: Settings, out: Path, journaled: bool, batch: list[PlanItem]
    ) -> tuple[float, int, int]:
        store = LocalStore(out)
        journal = StoreJournal(store, "bench", "shard-00000") if journaled else Journal()
        async with DashScopeProvider.from_settings(settings) as provider:
            engine = Engine(
                provider=provider,
                store=store,
                table=table,
                settings=settings,
                run_id="bench",
                journal=journal,
            )
            began = time.perf_counter()
            await engine.run_items(batch)
            wall = time.perf_counter() - began
        if isinstance(journal, StoreJournal):
            return wall, journal.writes, journal.entries
        return wall, 0, 0

    walls: dict[bool, list[float]] = {False: [], True: []}
    writes = entries = 0
    # The simulator runs in its own process, so it does not share the engine's GIL.
    with simulator_process() as sim, tempfile.TemporaryDirectory() as tmp:
        sim.configure(fast=True, rps=10_000.0, latency_s=args.latency)
        settings = Settings(
            dashscope_base_url=sim.base_url,
            dashscope_api_key=BENCH_KEY,
            poll_interval_s=0.02,
            poll_max_interval_s=0.05,
            rps=5000,
            max_in_flight=16,
        )
        for round_no in range(args.rounds):
            for journaled in (False, True) if round_no % 2 == 0 else (True, False):
                out = Path(tmp) / f"r{round_no}-{journaled}"
                batch = items(round_no * 2 + journaled)
                wall, w, e = asyncio.run(render(settings, out, journaled, batch))
                walls[journaled].append(wall)
                writes, entries = writes + w, entries + e
    plain, journaled = statistics.median(walls[False]), statistics.median(walls[True])
    print(f"{args.requests} requests, provider latency {args.latency:g} s, {args.rounds} rounds")
    print(f"no journal:   median {plain:.2f} s  {[round(w, 2) for w in walls[False]]}")
    print(f"with journal: median {journaled:.2f} s  {[round(w, 2) for w in walls[True]]}")
    print(f"journaled ÷ plain wall time: {journaled / plain:.3f}")
    print(
        f"group commit: {entries} entries in {writes} objects "
        f"({entries / max(writes, 1):.1f} entries per write)"
    )


if __name__ == "__main__":
    main()
