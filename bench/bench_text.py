"""Text checks: how well images are judged, how fast they are read, and whether a run with
text checks still keeps the provider's rate.

* judge quality: simulator images of quoted phrases (Chinese, English and both; 3 to 30
  characters; several sizes), half of them misspelt on purpose (one character replaced),
  read by the OCR worker processes and judged with ``--text-max-cer 0``. Right means a
  misspelt image failed and a correct one passed; the misspelt images that passed are
  counted apart (the goal is none). The simulator's own flag is the ground truth.
* OCR speed: the same reads, images per second per core (every image over the CPU seconds
  the worker processes used) and per second of wall time with the default workers.
* throughput: a ``qwbatch run`` process of a manifest whose rows all expect text, against a
  simulator process that misspells 30 % of them and admits R requests per second
  (``--rps R`` on both sides); the rate the simulator admitted requests at, from its first
  admission to its last (re-rolls included), over R.

Run: ``python -m bench.bench_text [--images N] [--rows N] [--rps R]``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import ROOT, provider_env, simulator_process
from qwbatch.core.keys import RequestFields, key_and_seed
from qwbatch.limits.local import LimitSpec
from qwbatch.simulator.render import Recipe, render
from qwbatch.text import TextReader, default_workers, judge

#: (width, height) of the judged images, in pixels.
SIZES = ((512, 512), (768, 768), (1024, 1024), (928, 1664), (1664, 928))
WORDS = tuple(
    "sale open fresh bread night market lantern coffee summer winter grand opening city "  # noqa: SIM905 - a word list reads better as prose
    "garden festival music live today only new season books studio quiet orbit tea made "
    "roadmap results launch global beta scale happy year spring menu latte matcha".split()
)
HANZI = (
    "秋季新品全场八折灯笼夜市新年快乐春节优惠限时抢购"
    "开业大吉欢迎光临美食咖啡茶饮音乐节花园城市书店周末特价"
)
MODEL = "qwen-image-2.0"
#: Seconds the limiter takes to ramp up to R after the start (left out of the steady rate).
RAMP_S = next(float(f.default) for f in dataclasses.fields(LimitSpec) if f.name == "ramp_s")


def phrase(rng: random.Random, kind: str, length: int) -> str:
    """A phrase of ``length`` characters (±2 for words) in ``kind``: en, zh or mixed."""
    if kind == "zh":
        return "".join(rng.choice(HANZI) for _ in range(length))
    if kind == "mixed":
        han = "".join(rng.choice(HANZI) for _ in range(max(2, length // 3)))
        return f"{han} {phrase(rng, 'en', max(3, length - len(han) - 1))}"
    words: list[str] = []
    while len(" ".join(words)) < length - 2:
        word = rng.choice(WORDS)
        words.append(word.capitalize() if rng.random() < 0.5 else word)
    if rng.random() < 0.3:
        words.append(str(rng.randrange(2, 100)))
    return " ".join(words)[: max(3, length + 2)].strip()


@dataclass(frozen=True)
class Sample:
    png: bytes
    expected: str
    misspelt: bool


def samples(count: int, seed: int = 15) -> list[Sample]:
    rng = random.Random(seed)
    out = []
    for number in range(count):
        kind = ("en", "zh", "mixed")[number % 3]
        text = phrase(rng, kind, rng.randint(3, 30))
        width, height = SIZES[number % len(SIZES)]
        misspelt = number % 2 == 1
        recipe = Recipe(
            model=MODEL,
            prompt=f"A poster with the words “{text}”",
            seed=number,
            index=0,
            count=1,
            width=width,
            height=height,
            misspell=misspelt,
        )
        out.append(Sample(render(recipe), text, misspelt))
    return out


def judge_quality(count: int, workers: int) -> dict[str, float]:
    cases = samples(count)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)

    async def read_all() -> tuple[list[str], float]:
        reader = TextReader(workers=workers)
        reader.start()
        await asyncio.gather(*(reader.read(case.png) for case in cases[:workers]))  # warm
        began = time.perf_counter()
        found = await asyncio.gather(*(reader.read(case.png) for case in cases))
        wall = time.perf_counter() - began
        await asyncio.to_thread(reader.close)
        return list(found), wall

    found, wall = asyncio.run(read_all())
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    right = misspelt_passed = correct_failed = 0
    for case, text in zip(cases, found, strict=True):
        ok = judge([case.expected], text).ok
        right += ok is not case.misspelt
        misspelt_passed += ok and case.misspelt
        correct_failed += (not ok) and not case.misspelt
        if ok is case.misspelt:
            print(f"  wrong: {case.expected!r} misspelt={case.misspelt} read {text!r}")
    images = len(cases) + workers  # the warm-up reads ran in the same workers
    return {
        "images": len(cases),
        "right_share": right / len(cases),
        "misspelt_passed": misspelt_passed,
        "correct_failed": correct_failed,
        "ocr_images_per_cpu_s": images / cpu if cpu > 0 else 0.0,
        "ocr_images_per_s": len(cases) / wall,
        "workers": workers,
    }


def throughput(rows: int, rps: float, work: Path) -> dict[str, float]:
    rng = random.Random(7)
    texts = [phrase(rng, ("en", "zh", "mixed")[i % 3], rng.randint(4, 16)) for i in range(rows)]
    prompts = [f"A poster number {i} with the words “{t}”" for i, t in enumerate(texts)]
    manifest = work / "text.parquet"
    pq.write_table(
        pa.table(
            {
                "id": [f"t{i:05d}" for i in range(rows)],
                "prompt": prompts,
                "model": [MODEL] * rows,
                "size": ["512*512"] * rows,
                "expected_text": [[t] for t in texts],
            }
        ),
        manifest,
    )
    out = work / "out"
    with simulator_process("--rps", str(rps), "--seed", "5", "--set", "misspell_rate=0.3") as sim:
        env = {
            **os.environ,
            **provider_env(sim),
            "PYTHONPATH": str(ROOT),
            "PREFECT_HOME": str(work / "prefect"),
        }
        began = time.monotonic()
        child = subprocess.run(
            [sys.executable, "-m", "qwbatch.cli", "run", str(manifest), "--out", str(out),
             "--rps", str(rps), "--quiet"],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        wall = time.monotonic() - began
        ledger = sim.ledger()
    if child.returncode not in (0, 1):  # 1: some rows still misspelt after their re-rolls
        raise RuntimeError(f"qwbatch run failed ({child.returncode}): {child.stderr[-2000:]}")
    admitted = sorted(ledger["admitted_at"])
    window = admitted[-1] - admitted[0] if len(admitted) > 1 else 0.0
    overall = (len(admitted) - 1) / window if window > 0 else 0.0
    # The steady window: after the limiter's ramp-up, until the last row's first render was
    # billed. Within it there is always a row waiting to be sent, so the run should sit at
    # R unless reading holds it back; after it only re-roll chains are left (render, read,
    # render again), whose pace is their latency, not the rate.
    originals = {(sha256(p.encode()).hexdigest(), first_seed(p)) for p in prompts}
    last_first = max(
        e["time"] for e in ledger["entries"] if (e["prompt_sha256"], e["seed"]) in originals
    )
    begin = admitted[0] + RAMP_S
    steady = sum(1 for t in admitted if begin <= t <= last_first)
    rate = steady / (last_first - begin) if last_first > begin else 0.0
    return {
        "rows": rows,
        "rps": rps,
        "calls": len(admitted),
        "rerolls": len(admitted) - rows,
        "rate": rate,
        "ratio": rate / rps,
        "steady_s": last_first - begin,
        "overall_rate": overall,
        "overall_ratio": overall / rps,
        "throttled": ledger["throttled"],
        "wall_s": wall,
        "exit": child.returncode,
    }


def first_seed(prompt: str) -> int:
    """The seed a manifest row without one renders with first (its re-rolls derive others)."""
    _, seed = key_and_seed(
        RequestFields(model=MODEL, mode="generate", prompt=prompt, size="512*512")
    )
    return seed


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="images judged")
    parser.add_argument("--rows", type=int, default=300, help="rows of the throughput run")
    parser.add_argument("--rps", type=float, default=4.0, help="the provider's rate R")
    parser.add_argument("--workers", type=int, default=default_workers(), help="OCR workers")
    args = parser.parse_args(argv)
    quality = judge_quality(args.images, args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        speed = throughput(args.rows, args.rps, Path(tmp))
    result = {**quality, **{f"run_{k}": v for k, v in speed.items()}}
    print(
        f"judge: {quality['right_share']:.1%} of {args.images} right, "
        f"{quality['misspelt_passed']} misspelt passed, {quality['correct_failed']} right "
        f"failed; OCR {quality['ocr_images_per_cpu_s']:.2f} images/s per core, "
        f"{quality['ocr_images_per_s']:.2f} images/s with {args.workers} workers"
    )
    print(
        f"run: {speed['rows']} rows + {speed['rerolls']} re-rolls; steady "
        f"{speed['rate']:.2f} req/s of R={args.rps:g} ({speed['ratio']:.3f}) over "
        f"{speed['steady_s']:.0f} s; first to last admission {speed['overall_rate']:.2f} req/s "
        f"({speed['overall_ratio']:.3f}, re-roll tail included); {speed['throttled']} "
        f"throttled; process wall {speed['wall_s']:.1f} s"
    )
    return result


if __name__ == "__main__":
    main()
