"""A store outage: the S3 endpoint (moto's server) goes away for 10 s mid-run and comes back
on the same port. The run waits it out (journal and uploads retried, image bytes held in
memory, nothing new sent meanwhile) and finishes with nothing lost and nothing paid twice."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
from local_run import render_all
from support import engine_settings

from qwbatch.catalog.table import read_catalog
from qwbatch.storage.layout import journal_prefix
from qwbatch.storage.stores import open_store

ROWS = 48
OUTAGE_S = 10.0


def test_a_store_outage_mid_run_loses_nothing(sim, outage_s3, tmp_path: Path) -> None:
    sim.configure(fast=True, latency_s=0.15)
    bucket = f"outage-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=outage_s3.url, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    manifest = tmp_path / "m.parquet"
    pq.write_table(
        pa.table(
            {
                "id": [f"r{i}" for i in range(ROWS)],
                "prompt": [f"outage test {i}" for i in range(ROWS)],
                "model": ["qwen-image-2.0" if i % 2 else "qwen-image-plus" for i in range(ROWS)],
                "size": ["512*512" if i % 2 else "1328*1328" for i in range(ROWS)],
            }
        ),
        manifest,
    )
    settings = engine_settings(
        sim,
        s3_endpoint_url=outage_s3.url,
        s3_region="us-east-1",
        s3_addressing_style="path",
        shard_size=24,
        max_in_flight=3,
        backoff_max_s=0.5,
    )
    out = f"s3://{bucket}/run"

    def images() -> int:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="run/images/")
        return sum(len(page.get("Contents", [])) for page in pages)

    summary = []
    worker = threading.Thread(target=lambda: summary.append(render_all(manifest, out, settings)))
    worker.start()
    while images() < 4 and worker.is_alive():
        time.sleep(0.05)
    stored_before = images()
    outage_s3.stop()
    time.sleep(OUTAGE_S)
    billed_during_outage = sim.ledger()["billed_images"]
    outage_s3.start()
    back_at = time.monotonic()
    worker.join(timeout=180)
    assert not worker.is_alive()
    finished_at = time.monotonic()

    (result,) = summary
    print(
        f"\nstore outage: {stored_before} images stored before, {billed_during_outage} billed "
        f"by its end; finished {finished_at - back_at:.1f} s after the store came back"
    )
    assert stored_before < ROWS  # the outage began mid-run
    assert finished_at > back_at
    assert (result.statuses, result.left) == ({"succeeded": ROWS}, 0)
    # No new call went out once the journal could not record it: a handful were on the wire.
    assert billed_during_outage <= stored_before + 2 * settings.max_in_flight + 2
    ledger = sim.ledger()
    billed = Counter(e["prompt_sha256"] for e in ledger["entries"])
    assert len(billed) == ROWS
    assert set(billed.values()) == {1}
    store = open_store(out, settings)
    rows = read_catalog(store).to_pylist()
    assert sorted(r["row_id"] for r in rows) == sorted(f"r{i}" for i in range(ROWS))
    objects = {store.uri(k) for k in store.list("images/")}
    assert objects == {r["output_uri"] for r in rows}
    assert list(store.list(journal_prefix(result.run_id))) == []
