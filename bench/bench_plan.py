"""Benchmark: plan a 1,000,000-row manifest against a 1,000,000-row catalog.

The manifest is ``bench_manifest``'s synthetic one; the catalog holds one succeeded row for
every other manifest request (half the keys present) plus as many rows for keys the manifest
does not ask for, in 8 parts. Both are generated once into a cache folder
(``--cache``, default ``~/.cache/qwbatch-bench``) and reused. Each measurement runs in a
fresh child process (so its peak RSS is the plan's alone) on a fresh output folder whose
catalog parts are hard links to the cached ones. Beside it, another child times a plain
``pyarrow.parquet.read_table`` of the same manifest: the ratio is plan ÷ read_table.

A manifest this large is planned in two processes (``qwbatch.plan.split``). CPU is both
processes' (the plan's own and its finished children's), and the peak RSS reported is the
plan process's peak plus its children's (``RUSAGE_CHILDREN``: the largest child's peak):
an upper bound of the two processes' peak together, as both peaks need not come at once.

Deleting a run's thousands of shard files makes creating files slow on a filesystem that
reuses no recently freed inode (ext4 without a journal, as on the machine these figures
were first taken on) for about a minute: space repeated runs apart.

    python -m bench.bench_plan                 # 1,000,000 rows
    python -m bench.bench_plan --rows 20000    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench.bench_manifest import write_manifest
from bench.common import ROOT

CATALOG_PARTS = 8
DEFAULT_CACHE = Path.home() / ".cache" / "qwbatch-bench"


def _catalog_part(keys: list[str], index: int) -> pa.Table:
    from qwbatch.catalog.table import SCHEMA

    rows = len(keys)
    columns: dict[str, pa.Array] = {}
    for field in SCHEMA:
        columns[field.name] = pa.nulls(rows, field.type)
    columns["run_id"] = pa.array(["bench-catalog"] * rows)
    columns["row_id"] = pa.array([f"old-{index}-{i}" for i in range(rows)])
    columns["request_key"] = pa.array(keys)
    columns["mode"] = pa.array(["generate"] * rows)
    columns["model"] = pa.array(["qwen-image-2.0"] * rows)
    columns["prompt"] = pa.array(["an earlier prompt"] * rows)
    columns["status"] = pa.array(["succeeded"] * rows)
    columns["image_index"] = pa.array([0] * rows, pa.int32())
    columns["output_uri"] = pa.array([f"file:///bench/images/{k[:2]}/{k}-0.png" for k in keys])
    columns["sha256"] = pa.array(keys)  # any 64-hex text will do
    columns["bytes"] = pa.array([123_456] * rows, pa.int64())
    columns["width"] = pa.array([1024] * rows, pa.int32())
    columns["height"] = pa.array([1024] * rows, pa.int32())
    return pa.Table.from_arrays([columns[f.name] for f in SCHEMA], schema=SCHEMA)


def prepare(cache: Path, rows: int) -> tuple[Path, Path]:
    """(manifest path, catalog folder) for ``rows`` rows, generated once under ``cache``."""
    import hashlib

    from qwbatch.core.model_table import ModelTable
    from qwbatch.manifest.reader import read_manifest

    folder = cache / f"plan-{rows}"
    manifest, catalog = folder / "manifest.parquet", folder / "catalog"
    if (folder / "done").exists():
        return manifest, catalog
    shutil.rmtree(folder, ignore_errors=True)
    catalog.mkdir(parents=True)
    write_manifest(manifest, rows)
    keys: list[str] = []
    for batch in read_manifest(manifest, table=ModelTable.load(), default_model="qwen-image-2.0"):
        keys.extend(r.request_key for i, r in enumerate(batch.requests) if r.row_number % 2 == 0)
    keys.extend(hashlib.sha256(f"absent {i}".encode()).hexdigest() for i in range(rows - len(keys)))
    step = -(-len(keys) // CATALOG_PARTS)
    for part in range(CATALOG_PARTS):
        chunk = keys[part * step : (part + 1) * step]
        pq.write_table(
            _catalog_part(chunk, part),
            catalog / f"part-bench-catalog-{part:02d}.parquet",
            compression="zstd",
        )
    (folder / "done").touch()
    return manifest, catalog


def plan_once(manifest: Path, catalog: Path) -> dict[str, float]:
    """Plan into a fresh folder (catalog parts hard-linked); wall seconds, counts, peak RSS."""
    from qwbatch.core.model_table import ModelTable
    from qwbatch.core.settings import Settings
    from qwbatch.plan.planner import plan_run
    from qwbatch.storage.stores import LocalStore

    with tempfile.TemporaryDirectory(dir=manifest.parent) as tmp:
        out = Path(tmp) / "out"
        (out / "catalog").mkdir(parents=True)
        for part in catalog.iterdir():
            os.link(part, out / "catalog" / part.name)
        settings = Settings(default_model="qwen-image-2.0")
        table = ModelTable.load()
        started, cpu = time.perf_counter(), time.process_time()
        children = _children_cpu()
        plan = plan_run(
            manifest, LocalStore(out), settings=settings, table=table, run_id="bench-plan"
        )
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        children = _children_cpu() - children
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "seconds": seconds,
        "cpu_seconds": cpu + children,
        "helper_cpu_seconds": children,
        "rows_read": plan.rows_read,
        "deduplicated": plan.deduplicated,
        "requests": plan.requests,
        "shards": len(plan.shard_keys),
        "peak_rss_mib": own + child,
        "helper_peak_rss_mib": child,
    }


def _children_cpu() -> float:
    """CPU seconds of this process's finished children (the plan's second process)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def read_table_once(manifest: Path) -> dict[str, float]:
    started = time.perf_counter()
    table = pq.read_table(manifest)
    return {"seconds": time.perf_counter() - started, "rows": table.num_rows}


def read_manifest_once(manifest: Path) -> dict[str, float]:
    """The validating reader alone (no catalog, no shards): the plan's own floor."""
    from qwbatch.core.model_table import ModelTable
    from qwbatch.manifest.reader import read_manifest

    started, cpu = time.perf_counter(), time.process_time()
    for _ in read_manifest(manifest, table=ModelTable.load(), default_model="qwen-image-2.0"):
        pass
    return {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu}


def _child(*args: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.run(
        [sys.executable, "-m", "bench.bench_plan", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    if child.returncode:
        sys.exit(f"bench_plan {args[0]} failed:\n{child.stderr}")
    result: dict[str, float] = json.loads(child.stdout.splitlines()[-1])
    return result


def measure(rows: int, cache: Path = DEFAULT_CACHE) -> dict[str, float]:
    manifest, catalog = prepare(cache, rows)
    baseline = _child("--read-table", str(manifest))
    reader = _child("--read-manifest", str(manifest))
    result = _child("--plan", str(manifest), str(catalog))
    return {
        "rows": rows,
        **result,
        "read_table_s": baseline["seconds"],
        "ratio": result["seconds"] / baseline["seconds"],
        "reader_s": reader["seconds"],
        "reader_cpu_s": reader["cpu_seconds"],
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--plan", nargs=2, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--read-table", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--read-manifest", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plan:
        print(json.dumps(plan_once(*args.plan)))
        return {}
    if args.read_manifest:
        print(json.dumps(read_manifest_once(args.read_manifest)))
        return {}
    if args.read_table:
        print(json.dumps(read_table_once(args.read_table)))
        return {}
    result = measure(args.rows, args.cache)
    print(
        f"plan: {result['rows']:,} rows vs a {result['rows']:,}-row catalog: "
        f"{result['seconds']:.2f} s (CPU {result['cpu_seconds']:.2f} s, of which its second "
        f"process {result['helper_cpu_seconds']:.2f} s; goal <= 10 s), "
        f"peak RSS {result['peak_rss_mib']:.0f} MiB (the plan's process plus its second, "
        f"{result['helper_peak_rss_mib']:.0f} MiB: an upper bound; goal <= 1024), "
        f"{result['ratio']:.1f}x pq.read_table ({result['read_table_s']:.2f} s); "
        f"{result['deduplicated']:,} deduplicated, {result['requests']:,} to render "
        f"in {result['shards']:,} shards; read_manifest alone {result['reader_s']:.2f} s "
        f"(CPU {result['reader_cpu_s']:.2f} s)"
    )
    return result


if __name__ == "__main__":
    main()
