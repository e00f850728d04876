"""Benchmark: plan a 1,000,000-row manifest against a 1,000,000-row catalog.

The manifest is ``bench_manifest``'s synthetic one; the catalog holds one succeeded row for
every other manifest request (half the keys present) plus as many rows for keys the manifest
does not ask for, in 8 parts. Both are generated once into a cache folder
(``--cache``, default ``~/.cache/qwbatch-bench``) and reused. Each measurement runs in a
fresh child process (so its peak RSS is the plan's alone) on a fresh output folder whose
catalog parts are hard links to the cached ones. Beside it, another child times a plain
``pyarrow.parquet.read_table`` of the same manifest: the ratio is plan ÷ read_table.

With ``QWBATCH_PLAN_SPLIT_ROWS`` set, a manifest this large is planned in two processes
(``qwbatch.plan.split``; one by default). CPU is both processes' (the plan's own and its
finished children's), and the peak RSS reported is the plan process's peak plus its
children's (``RUSAGE_CHILDREN``: the largest child's peak): an upper bound of the two
processes' peak together, as both peaks need not come at once.

Deleting a run's thousands of shard files makes creating files slow on a filesystem that
reuses no recently freed inode (ext4 without a journal, as on the machine these figures
were first taken on) for about a minute: space repeated runs apart.

Shapes (``--shapes``): the same rows as manifests of other shapes, each planned by the
commands a user types, as whole processes: ``qwbatch run M --out D --dry-run`` and
``qwbatch estimate M`` (``--out D`` where D holds the catalog). The shapes: written by
DuckDB, by polars and by pyarrow with each writer's default row groups, every row new and no
catalog; tags and edit columns present (1 row in 100 an edit of one of four local images);
half of them new against the 1,000,000-row catalog above. Each command's wall and CPU
seconds (the process tree's, from ``wait4``), the peak RSS of its largest process and the
peak of its processes' RSS summed (sampled every 20 ms), and wall ÷ a plain
``pq.read_table`` of the same file; the 1-minute load average before each command is
printed beside it, as the machine is shared.

    python -m bench.bench_plan                 # 1,000,000 rows
    python -m bench.bench_plan --rows 20000    # a smoke run
    python -m bench.bench_plan --shapes        # each shape, both commands
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
from typing import Any

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


#: Goals for each shape and command (whole process): wall seconds, peak RSS MiB.
SHAPE_GOAL_S = 8.0
SHAPE_GOAL_MIB = 1024.0
EDIT_EVERY = 100  # one row in EDIT_EVERY an edit, in the manifest with edit columns


def _edit_columns(table: pa.Table, folder: Path) -> pa.Table:
    """``table`` with ``mode`` and ``input_images``: every ``EDIT_EVERY``-th row an edit of
    one of four small PNGs beside the manifest (model qwen-image-edit, one image)."""
    from PIL import Image

    names = []
    for index in range(4):
        name = f"input-{index}.png"
        Image.new("RGB", (64, 64), (60 * index, 90, 200)).save(folder / name)
        names.append(name)
    rows = table.num_rows
    edit = [i % EDIT_EVERY == 0 for i in range(rows)]
    model, size, n = (table[c].to_pylist() for c in ("model", "size", "n"))
    return (
        table.set_column(
            table.schema.get_field_index("model"),
            "model",
            pa.array(["qwen-image-edit" if e else m for e, m in zip(edit, model, strict=True)]),
        )
        .set_column(
            table.schema.get_field_index("size"),
            "size",
            pa.array([None if e else v for e, v in zip(edit, size, strict=True)], pa.string()),
        )
        .set_column(
            table.schema.get_field_index("n"),
            "n",
            pa.array([1 if e else v for e, v in zip(edit, n, strict=True)], pa.int32()),
        )
        .append_column("mode", pa.array(["edit" if e else None for e in edit], pa.string()))
        .append_column(
            "input_images",
            pa.array(
                [[names[i % 4]] if e else None for i, e in enumerate(edit)], pa.list_(pa.string())
            ),
        )
    )


def prepare_shapes(cache: Path, rows: int) -> dict[str, tuple[Path, Path | None]]:
    """Shape name → (manifest, catalog folder or None), written once under ``cache`` from
    :func:`prepare`'s manifest."""
    import duckdb
    import polars

    manifest, catalog = prepare(cache, rows)
    folder = cache / f"plan-{rows}" / "shapes"
    shapes: dict[str, tuple[Path, Path | None]] = {
        "DuckDB, all new": (folder / "duckdb.parquet", None),
        "polars, all new": (folder / "polars.parquet", None),
        "pyarrow, all new": (folder / "pyarrow.parquet", None),
        "tags + edit columns, all new": (folder / "edits.parquet", None),
        "half new vs catalog": (manifest, catalog),
    }
    if (folder / "done").exists():
        return shapes
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    table = pq.read_table(manifest)
    pq.write_table(table, folder / "pyarrow.parquet")
    frame = polars.from_arrow(table)
    assert isinstance(frame, polars.DataFrame)
    frame.write_parquet(folder / "polars.parquet")
    connection = duckdb.connect()
    connection.register("manifest", table)
    # COPY takes no parameter for its target; the path is our own cache file.
    target = folder / "duckdb.parquet"
    connection.execute(f"COPY (SELECT * FROM manifest) TO '{target}' (FORMAT parquet)")  # noqa: S608
    connection.close()
    pq.write_table(_edit_columns(table, folder), folder / "edits.parquet")
    (folder / "done").touch()
    return shapes


def run_command(args: list[str]) -> dict[str, float]:
    """``qwbatch ARGS`` as a whole process: wall and CPU seconds of its process tree, the
    peak RSS (MiB) of its largest process, and the peak of its processes' RSS summed."""
    import threading

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    load = os.getloadavg()[0]
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "qwbatch.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    summed = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            summed[0] = max(summed[0], _tree_rss_mib(child.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    child.returncode = os.waitstatus_to_exitcode(status)
    errors = child.stderr.read().decode() if child.stderr else ""
    if child.returncode:
        sys.exit(f"qwbatch {' '.join(args)} failed:\n{errors}")
    return {
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "summed_rss_mib": summed[0],
        "load": load,
    }


def _tree_rss_mib(pid: int) -> float:
    """The RSS (MiB) of ``pid`` and its children now, from /proc (0 when gone)."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/statm") as statm:
                total += int(statm.read().split()[1])
            with open(f"/proc/{current}/task/{current}/children") as children:
                pending.extend(int(p) for p in children.read().split())
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_shapes(rows: int, cache: Path = DEFAULT_CACHE) -> list[dict[str, Any]]:
    """Each shape's two commands (see the module docstring): one result dict each."""
    results: list[dict[str, Any]] = []
    # Written in a child: a process forked from a large one starts with its peak RSS.
    _child("--prepare-shapes", "--rows", str(rows), "--cache", str(cache))
    for shape, (manifest, catalog) in prepare_shapes(cache, rows).items():
        baseline = _child("--read-table", str(manifest))["seconds"]
        groups = pq.ParquetFile(manifest).metadata.num_row_groups
        for command in ("dry-run", "estimate"):
            with tempfile.TemporaryDirectory(dir=manifest.parent) as tmp:
                out = Path(tmp) / "out"
                if catalog is not None:
                    (out / "catalog").mkdir(parents=True)
                    for part in catalog.iterdir():
                        os.link(part, out / "catalog" / part.name)
                if command == "dry-run":
                    args = ["run", str(manifest), "--out", str(out), "--dry-run"]
                else:
                    args = ["estimate", str(manifest)]
                    args += ["--out", str(out)] if catalog is not None else []
                result = run_command(args)
            results.append(
                {
                    "shape": shape,
                    "row_groups": groups,
                    "command": command,
                    **result,
                    "read_table_s": baseline,
                    "ratio": result["seconds"] / baseline,
                    "met": result["seconds"] <= SHAPE_GOAL_S
                    and result["summed_rss_mib"] <= SHAPE_GOAL_MIB,
                }
            )
    return results


def shapes_main(rows: int, cache: Path) -> list[dict[str, Any]]:
    results = measure_shapes(rows, cache)
    for r in results:
        print(
            f"plan shape {r['shape']} ({r['row_groups']} row groups), {r['command']}: "
            f"{r['seconds']:.2f} s (CPU {r['cpu_seconds']:.2f} s, load {r['load']:.1f}; goal "
            f"<= {SHAPE_GOAL_S:.0f} s), peak RSS {r['summed_rss_mib']:.0f} MiB summed "
            f"({r['peak_rss_mib']:.0f} MiB largest process; goal <= {SHAPE_GOAL_MIB:.0f}), "
            f"{r['ratio']:.1f}x pq.read_table ({r['read_table_s']:.2f} s)"
        )
    return results


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--plan", nargs=2, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--read-table", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--read-manifest", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--shapes", action="store_true", help="each manifest shape instead")
    parser.add_argument("--prepare-shapes", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prepare_shapes:
        prepare_shapes(args.cache, args.rows)
        print(json.dumps({}))
        return {}
    if args.shapes:
        shapes_main(args.rows, args.cache)
        return {}
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
