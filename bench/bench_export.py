"""Benchmark: export a DEST of 5,000 and of 20,000 images, side by side, in each format.

The DEST is synthetic and made quickly: a few hundred distinct small noise PNGs (about 12 KB
each, so MB/s is not flattered by compression) stored under the content-addressed keys of
N made-up requests through the store (``LocalStore.put``), and one catalog part holding
their succeeded rows. Nothing is rendered. Each export runs in a child process of its own,
so its peak RSS is that export's alone; the figure that matters is how it changes from 5,000
to 20,000 images (it should not: an export streams, one shard at a time).

    python -m bench.bench_export                         # 5,000 vs 20,000 images
    python -m bench.bench_export --images 500 2000 --formats webdataset   # a smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from bench.common import ROOT

#: Distinct PNGs the DEST's images cycle through.
_DISTINCT = 256
_SIDE = 64


def _pngs(count: int) -> list[bytes]:
    rng = random.Random(7)
    out = []
    for _ in range(count):
        raw = bytes(rng.getrandbits(8) for _ in range(_SIDE * _SIDE * 3))
        sink = io.BytesIO()
        Image.frombytes("RGB", (_SIDE, _SIDE), raw).save(sink, format="PNG")
        out.append(sink.getvalue())
    return out


def make_dest(folder: Path, images: int) -> Path:
    """A DEST with ``images`` stored PNGs and their catalog rows; its path."""
    from qwbatch.catalog.table import write_part
    from qwbatch.core.types import CatalogRecord
    from qwbatch.storage.layout import output_key
    from qwbatch.storage.stores import LocalStore

    store = LocalStore(folder)
    pngs = _pngs(_DISTINCT)
    records = []
    run_id = "20260101T000000Z-bench0"
    for i in range(images):
        key = hashlib.sha256(f"bench-{i}".encode()).hexdigest()
        data = pngs[i % _DISTINCT]
        store.put(output_key(key, 0), data, content_type="image/png", durable=False)
        records.append(
            CatalogRecord(
                run_id=run_id,
                row_id=f"row-{i:07d}",
                request_key=key,
                mode="generate",
                model="qwen-image-2.0",
                prompt=f"a synthetic test image number {i}, flat noise, 64 by 64 pixels",
                size=f"{_SIDE}*{_SIDE}",
                seed=i,
                status="succeeded",
                image_index=0,
                output_uri=store.uri(output_key(key, 0)),
                bytes=len(data),
                width=_SIDE,
                height=_SIDE,
                cost=0.03,
                currency="USD",
                tags={"set": "bench"},
            )
        )
    write_part(store, records, run_id=run_id, label="bench")
    return folder


def _high_water_mib() -> float:
    """This process's peak RSS (MiB), from ``VmHWM``: unlike ``getrusage``'s ``ru_maxrss``,
    which Linux carries over ``fork`` and ``exec``, it does not start at the parent's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource  # not Linux: the best there is

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(dest: str, target: str, fmt: str, shard_mb: float) -> dict[str, float]:
    from qwbatch.export import export

    before = _high_water_mib()
    result = export(dest, target, format=fmt, shard_size_mb=shard_mb)  # type: ignore[arg-type]
    return {
        "images": result.exported,
        "seconds": result.seconds,
        "mb": result.bytes / 1e6,
        "shards": len(result.shards),
        "rss_before_mib": before,
        "peak_rss_mib": _high_water_mib(),
    }


def _measure(dest: Path, fmt: str, shard_mb: float, scratch: Path) -> dict[str, float]:
    target = scratch / f"export-{fmt}-{dest.name}"
    child = subprocess.run(
        [sys.executable, "-m", "bench.bench_export", "--child", str(dest), str(target), fmt,
         str(shard_mb)],
        capture_output=True, text=True, cwd=ROOT, check=True,
    )  # fmt: skip
    return json.loads(child.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """{format: {images: figures}}; prints one line per measurement."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_export")
    parser.add_argument("--images", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--formats", nargs="+", default=["hf", "webdataset", "files"])
    parser.add_argument("--shard-mb", type=float, default=16.0)
    parser.add_argument("--child", nargs=4, metavar=("DEST", "TARGET", "FORMAT", "SHARD_MB"))
    args = parser.parse_args(argv)
    if args.child:
        dest, target, fmt, shard_mb = args.child
        print(json.dumps(_child(dest, target, fmt, float(shard_mb))))
        return {}
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="qwbatch-bench-export-") as tmp:
        scratch = Path(tmp)
        for images in args.images:
            began = time.monotonic()
            dest = make_dest(scratch / f"dest-{images}", images)
            print(f"made a DEST of {images:,} images in {time.monotonic() - began:.1f} s")
            for fmt in args.formats:
                r = _measure(dest, fmt, args.shard_mb, scratch)
                results.setdefault(fmt, {})[str(images)] = r
                print(
                    f"{fmt:>10} {images:>7,} images: {r['images'] / r['seconds']:,.0f} img/s, "
                    f"{r['mb'] / r['seconds']:.1f} MB/s, {int(r['shards'])} shards, "
                    f"peak RSS {r['peak_rss_mib']:.0f} MiB (after imports "
                    f"{r['rss_before_mib']:.0f} MiB)"
                )
    return results


if __name__ == "__main__":
    main()
