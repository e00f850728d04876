"""Orchestration overhead: qwbatch end to end vs the floor, and a no-op rerun.

* overhead: images per second of a full ``render_manifest`` flow (Prefect, planning, limiter,
  download, verification, upload into a local folder, catalog) against the simulator in fast
  mode with no latency and no rate limit, divided by the rate of a minimal asyncio + httpx
  loop that only calls the simulator and downloads each result (the floor, run before and
  after qwbatch and averaged, as the load of a shared machine moves), with the same
  number of requests in flight. Both runs hit the same simulator process, one after the other.
  Beside it, without a goal: the same loop with aiohttp, which is what qwbatch sends with;
  httpx's per-request cost is most of its floor's.
* no-op rerun: the same manifest run again as a fresh ``qwbatch run`` process, the whole
  process timed (it plans first, and starts Prefect only when there is something to
  render): provider calls made (must be 0) and wall time.

Run: ``python -m bench.bench_overhead [--rows N] [--in-flight C]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import BENCH_KEY, ROOT, provider_env, simulator_process

SIZE = "512*512"
MODEL = "qwen-image-2.0"


def write_manifest(path: Path, rows: int) -> None:
    pq.write_table(
        pa.table(
            {
                "id": [f"r{i:07d}" for i in range(rows)],
                "prompt": [f"benchmark prompt number {i}, a small test image" for i in range(rows)],
                "model": [MODEL] * rows,
                "size": [SIZE] * rows,
            }
        ),
        path,
    )


async def floor_loop(base_url: str, rows: int, in_flight: int) -> float:
    """Seconds for the minimal loop: POST each request, GET each result, nothing else."""
    gate = asyncio.Semaphore(in_flight)
    headers = {"Authorization": f"Bearer {BENCH_KEY}"}
    limits = httpx.Limits(max_connections=in_flight * 2)

    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one(i: int) -> None:
            async with gate:
                response = await client.post(
                    f"{base_url}/services/aigc/multimodal-generation/generation",
                    json=_floor_body(i),
                    headers=headers,
                )
                response.raise_for_status()
                url = response.json()["output"]["choices"][0]["message"]["content"][0]["image"]
                (await client.get(url)).raise_for_status()

        began = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(rows)))
        return time.perf_counter() - began


async def aiohttp_floor_loop(base_url: str, rows: int, in_flight: int) -> float:
    """The same minimal loop with aiohttp instead of httpx: not the goal's floor (the issue
    names httpx), printed beside it because qwbatch sends through aiohttp, and httpx's
    own per-request cost makes its floor a soft one."""
    import aiohttp

    gate = asyncio.Semaphore(in_flight)
    headers = {"Authorization": f"Bearer {BENCH_KEY}"}
    connector = aiohttp.TCPConnector(limit=in_flight * 2)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            async with gate:
                async with session.post(
                    f"{base_url}/services/aigc/multimodal-generation/generation",
                    json=_floor_body(i),
                    headers=headers,
                ) as response:
                    response.raise_for_status()
                    url = (await response.json())["output"]["choices"][0]["message"]["content"][0][
                        "image"
                    ]
                async with session.get(url) as response:
                    response.raise_for_status()
                    await response.read()

        began = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(rows)))
        return time.perf_counter() - began


def _floor_body(i: int) -> dict[str, object]:
    """A floor loop's request body: one small image, one prompt per row."""
    return {
        "model": MODEL,
        "input": {
            "messages": [
                {
                    "role": "user",
                    "content": [{"text": f"floor prompt number {i}, a small test image"}],
                }
            ]
        },
        "parameters": {"size": SIZE, "n": 1, "seed": i, "watermark": False},
    }


def qwbatch_flow(manifest: Path, out: Path, in_flight: int) -> tuple[float, float, int]:
    """(Prefect warm-up seconds, flow seconds, images stored) for one in-process run."""
    from prefect import flow

    from flows.render import render_manifest

    @flow
    def warm_up() -> None:
        return None

    began = time.perf_counter()
    warm_up()
    warm = time.perf_counter() - began
    began = time.perf_counter()
    summary = render_manifest(
        manifest=str(manifest), out=str(out), rps=1e6, max_in_flight=in_flight
    )
    return warm, time.perf_counter() - began, summary.images_stored


def noop_rerun(manifest: Path, out: Path, env: dict[str, str]) -> float:
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "qwbatch.cli", "run", str(manifest), "--out", str(out)],
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - began


def measure(rows: int, in_flight: int, work: Path) -> dict[str, float]:
    """The figures, from runs in the folder ``work`` (left for the caller to remove: removing
    a 10,000-image output takes minutes on a slow disk, and is not the rerun's time)."""
    tmp = str(work)
    with simulator_process("--fast", "--no-rate-limit") as sim:
        manifest = Path(tmp) / "m.parquet"
        out = Path(tmp) / "out"
        write_manifest(manifest, rows)
        env = provider_env(sim)
        os.environ.update(env)
        os.environ["PREFECT_HOME"] = str(Path(tmp) / "prefect")

        # The floor before and after qwbatch, averaged: on a shared machine the load moves.
        before_s = asyncio.run(floor_loop(sim.base_url, rows, in_flight))
        sim.reset()
        warm_s, flow_s, stored = qwbatch_flow(manifest, out, in_flight)
        assert stored == rows, f"stored {stored} of {rows}"
        sim.reset()
        after_s = asyncio.run(floor_loop(sim.base_url, rows, in_flight))
        floor_s = (before_s + after_s) / 2
        sim.reset()
        aiohttp_s = asyncio.run(aiohttp_floor_loop(sim.base_url, rows, in_flight))
        sim.reset()
        rerun_s = noop_rerun(manifest, out, env)
        calls = sum(sim.ledger()["requests"].values())
    return {
        "rows": rows,
        "floor_ips": rows / floor_s,
        "floor_before_ips": rows / before_s,
        "floor_after_ips": rows / after_s,
        "qwbatch_ips": rows / flow_s,
        "ratio": (rows / flow_s) / (rows / floor_s),
        "aiohttp_floor_ips": rows / aiohttp_s,
        "aiohttp_ratio": aiohttp_s / flow_s,
        "prefect_warmup_s": warm_s,
        "rerun_calls": calls,
        "rerun_s": rerun_s,
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--in-flight", type=int, default=32)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="qwbatch-overhead-"))
    try:
        result = measure(args.rows, args.in_flight, work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    print(
        f"overhead: {result['rows']} images, floor {result['floor_ips']:.0f} img/s "
        f"(before {result['floor_before_ips']:.0f}, after {result['floor_after_ips']:.0f}), "
        f"qwbatch {result['qwbatch_ips']:.0f} img/s, ratio {result['ratio']:.2f} (goal >= 0.7); "
        f"Prefect warm-up {result['prefect_warmup_s']:.1f} s"
    )
    print(
        f"beside it (no goal): the same loop with aiohttp {result['aiohttp_floor_ips']:.0f} img/s, "
        f"qwbatch ÷ that {result['aiohttp_ratio']:.2f}"
    )
    print(
        f"no-op rerun: {result['rows']} completed rows, {result['rerun_calls']} provider calls "
        f"(goal 0), {result['rerun_s']:.1f} s wall, whole process (goal <= 15 s)",
        flush=True,
    )
    began = time.perf_counter()
    shutil.rmtree(work, ignore_errors=True)
    print(f"(removed the benchmark's output folder in {time.perf_counter() - began:.1f} s)")
    return result


if __name__ == "__main__":
    main()
