"""Benchmark: planning an edit manifest whose inputs are on the web, by prefetch concurrency.

Serves ``--inputs`` distinct 800×600 PNGs from a loopback HTTP server that waits
``--latency`` seconds before each answer (a remote asset server's round trip), writes an edit
manifest naming each twice (so half the rows fold), and plans it into a temporary folder with
``input_fetch_concurrency`` = 1 and = N, side by side in one run: fetch, hash, Pillow check and
staging included. Prints the times and their ratio.

Run: ``python -m bench.bench_inputs [--inputs N] [--latency S] [--concurrency C]``
(defaults: 64 inputs, 0.05 s, 8).
"""

from __future__ import annotations

import argparse
import io
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from qwbatch.core.settings import Settings
from qwbatch.plan import new_run_id
from qwbatch.runs import runner


def serve(images: dict[str, bytes], latency_s: float) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # the stdlib's naming
            time.sleep(latency_s)
            body = images.get(self.path, b"")
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def picture(index: int) -> bytes:
    image = Image.new("RGB", (800, 600), (index % 256, (index * 7) % 256, (index * 13) % 256))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def plan_seconds(manifest: Path, out: Path, concurrency: int) -> float:
    settings = Settings(
        dashscope_api_key="unused",
        input_allow_hosts=["127.0.0.1"],
        input_fetch_concurrency=concurrency,
    )
    began = time.perf_counter()
    plan = runner.plan(str(manifest), str(out), settings=settings, run_id=new_run_id())
    elapsed = time.perf_counter() - began
    assert plan.rejected == 0, plan
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per request")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    images = {f"/img-{i}.png": picture(i) for i in range(args.inputs)}
    server = serve(images, args.latency)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        manifest = root / "edits.parquet"
        uris = [f"{base}{path}" for path in images for _ in range(2)]
        pq.write_table(
            pa.table(
                {
                    "id": [f"row-{i}" for i in range(len(uris))],
                    "prompt": ["Put the product on marble"] * len(uris),
                    "mode": ["edit"] * len(uris),
                    "model": ["qwen-image-edit-plus"] * len(uris),
                    "input_images": [[uri] for uri in uris],
                }
            ),
            manifest,
        )
        serial = plan_seconds(manifest, root / "out-1", 1)
        parallel = plan_seconds(manifest, root / f"out-{args.concurrency}", args.concurrency)
    server.shutdown()
    print(
        f"{len(uris)} edit rows, {args.inputs} distinct web inputs, "
        f"{args.latency * 1000:.0f} ms per request"
    )
    print(f"plan, input_fetch_concurrency=1:  {serial:.2f} s")
    print(f"plan, input_fetch_concurrency={args.concurrency}:  {parallel:.2f} s")
    print(f"speed-up: {serial / parallel:.1f}x")


if __name__ == "__main__":
    main()
