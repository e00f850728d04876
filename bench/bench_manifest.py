"""Benchmark: read and validate a 1,000,000-row manifest, keys included.

Writes a synthetic manifest (realistic ~100-character prompts, a few sizes and models, map
tags, some explicit seeds) to a temporary folder, then reads it with ``read_manifest`` in a
fresh child process so that its peak RSS is the reader's alone. For scale on the machine at
hand it also times, in another child, the naive loop the reader replaces (a pydantic model
and a sha256 of its JSON per row) over the first 200,000 rows. Prints the measured numbers.

    .venv/bin/python bench/bench_manifest.py            # 1,000,000 rows
    .venv/bin/python bench/bench_manifest.py --rows 200000 --batch-size 16384
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SUBJECTS = [
    "a red sneaker",
    "a ceramic mug",
    "a leather backpack",
    "a wristwatch",
    "a bottle of olive oil",
    "a pair of sunglasses",
    "a wooden chair",
    "a desk lamp",
    "a bouquet of tulips",
    "a vintage camera",
    "a smartphone case",
    "a wool scarf",
]
SCENES = [
    "on a white studio background",
    "on a marble kitchen counter",
    "in a sunlit loft",
    "on a beach at golden hour",
    "in a minimalist showroom",
    "on a rustic wooden table",
    "against a pastel gradient",
    "in a rainy neon-lit street",
]
STYLES = [
    "soft diffused lighting, high detail",
    "dramatic rim light, shallow depth of field",
    "flat lay, top-down view, crisp shadows",
    "cinematic colour grading, 35mm film look",
    "clean e-commerce style, centred composition",
    "watercolour illustration style",
]
SIZES = [None, "1024*1024", "1328*1328", "1664x928", "928*1664", "2048*2048"]


def write_manifest(path: Path, rows: int, seed: int = 7) -> None:
    """A manifest of ``rows`` rows in row groups of 131,072 (pyarrow writer, string ids)."""
    rng = random.Random(seed)
    chunk = 131_072
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("prompt", pa.string()),
            ("model", pa.string()),
            ("size", pa.string()),
            ("n", pa.int32()),
            ("seed", pa.int64()),
            ("tags", pa.map_(pa.string(), pa.string())),
        ]
    )
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, chunk):
            count = min(chunk, rows - start)
            prompts = [
                f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(SCENES)}, "
                f"{rng.choice(STYLES)}, variant {start + i}"
                for i in range(count)
            ]
            writer.write_table(
                pa.table(
                    {
                        "id": [f"sku-{start + i:08d}" for i in range(count)],
                        "prompt": prompts,
                        "model": [
                            rng.choice([None, None, "qwen-image-2.0-pro"]) for _ in range(count)
                        ],
                        "size": [rng.choice(SIZES) for _ in range(count)],
                        "n": pa.array([rng.choice([None, 1, 2]) for _ in range(count)], pa.int32()),
                        "seed": [
                            rng.randrange(2**31) if rng.random() < 0.2 else None
                            for _ in range(count)
                        ],
                        "tags": pa.array(
                            [
                                [("campaign", "spring"), ("sku", str(start + i))]
                                for i in range(count)
                            ],
                            pa.map_(pa.string(), pa.string()),
                        ),
                    },
                    schema=schema,
                ),
                row_group_size=chunk,
            )


def read_once(path: Path, batch_size: int) -> dict[str, float]:
    """Read the manifest once; wall time (s), counts and peak RSS (MiB) of this process."""
    from qwbatch.core.model_table import ModelTable
    from qwbatch.manifest.reader import read_manifest

    table = ModelTable.load()
    start, cpu_start = time.perf_counter(), time.process_time()
    reader = read_manifest(path, table=table, default_model="qwen-image-2.0", batch_size=batch_size)
    opened = time.perf_counter() - start
    accepted = rejected = 0
    for batch in reader:
        accepted += len(batch.requests)
        rejected += len(batch.rejects)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "open_seconds": opened,
        "accepted": accepted,
        "rejected": rejected,
        "peak_rss_mib": peak_mib,
    }


def naive_once(path: Path, rows: int = 200_000) -> dict[str, float]:
    """CPU microseconds per row of the naive loop: pydantic model + sha256 of JSON per row."""
    import hashlib

    from pydantic import BaseModel

    class Row(BaseModel):
        id: str
        prompt: str
        model: str | None = None
        size: str | None = None
        n: int | None = None
        seed: int | None = None
        tags: list[tuple[str, str]] | None = None

    done = 0
    cpu_start = time.process_time()
    for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536):
        for record in batch.to_pylist():
            row = Row(**record)
            hashlib.sha256(json.dumps(row.model_dump(), sort_keys=True).encode()).hexdigest()
            done += 1
        if done >= rows:
            break
    return {"us_per_row": (time.process_time() - cpu_start) / done * 1e6}


def _child(mode: str, path: Path, batch_size: int) -> dict[str, float]:
    repo = str(Path(__file__).resolve().parents[1])  # import qwbatch from this checkout
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p),
    }
    child = subprocess.run(
        [sys.executable, __file__, mode, str(path), "--batch-size", str(batch_size)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if child.returncode:
        sys.exit(f"{mode} failed:\n{child.stderr}")
    result: dict[str, float] = json.loads(child.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=65_536)
    parser.add_argument("--no-naive", action="store_true", help="skip the naive-loop timing")
    parser.add_argument("--read", type=Path, help=argparse.SUPPRESS)  # child-process modes
    parser.add_argument("--naive", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read:
        print(json.dumps(read_once(args.read, args.batch_size)))
        return
    if args.naive:
        print(json.dumps(naive_once(args.naive)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.parquet"
        started = time.perf_counter()
        write_manifest(path, args.rows)
        print(
            f"wrote {args.rows:,} rows ({path.stat().st_size / 2**20:.1f} MiB) "
            f"in {time.perf_counter() - started:.1f} s"
        )
        result = _child("--read", path, args.batch_size)
        naive = None if args.no_naive else _child("--naive", path, args.batch_size)
    rate = args.rows / result["seconds"]
    print(
        f"read_manifest: {result['seconds']:.2f} s for {args.rows:,} rows "
        f"({rate:,.0f} rows/s; CPU {result['cpu_seconds']:.2f} s; "
        f"open + duplicate-id pass {result['open_seconds']:.2f} s), "
        f"accepted {result['accepted']:,}, rejected {result['rejected']:,}, "
        f"peak RSS {result['peak_rss_mib']:.0f} MiB (batch size {args.batch_size:,}); "
        f"{result['cpu_seconds'] / args.rows * 1e6:.1f} µs CPU per row"
    )
    if naive is not None:
        print(
            f"naive loop on this machine: {naive['us_per_row']:.1f} µs CPU per row "
            f"(= {naive['us_per_row']:.1f} s per 1,000,000 rows), for scale"
        )


if __name__ == "__main__":
    main()
