"""Benchmark: what a thumbnail adds to storing an output, beside the verification it follows.

For each output size, renders one simulator PNG (a flat colour with text, as the engine
receives) and times, alternating in one process, ``images.verify_image`` (which the engine
already runs on every output) and ``images.thumbnail`` (what it now runs too). Prints the
median milliseconds of each, their ratio, and the thumbnail's size in bytes.

    .venv/bin/python bench/bench_thumbnails.py
    .venv/bin/python bench/bench_thumbnails.py --repeats 40
"""

from __future__ import annotations

import argparse
import statistics
import time

from qwbatch.core import images
from qwbatch.simulator.render import Recipe, render

SIZES = [(1024, 1024), (1664, 928), (2048, 2048)]


def median_ms(fn, data: bytes, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn(data)
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"{'size':>10} {'verify ms':>10} {'thumbnail ms':>13} {'ratio':>6} {'thumb bytes':>12}")
    for width, height in SIZES:
        recipe = Recipe(
            model="qwen-image-2.0",
            prompt="Studio product photo of a ceramic mug on a seamless warm grey background",
            seed=7,
            index=0,
            count=1,
            width=width,
            height=height,
        )
        data = render(recipe)
        verify, thumb = [], []
        for _ in range(3):  # alternate, so both see the same machine load
            verify.append(median_ms(images.verify_image, data, args.repeats))
            thumb.append(median_ms(images.thumbnail, data, args.repeats))
        v, t = statistics.median(verify), statistics.median(thumb)
        size = len(images.thumbnail(data))
        print(f"{width}*{height:<5} {v:10.1f} {t:13.1f} {t / v:6.2f} {size:12d}")


if __name__ == "__main__":
    main()
