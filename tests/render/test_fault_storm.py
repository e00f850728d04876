"""A fault storm: 5xx, bursts of 429, dropped connections, corrupt bytes, errors inside a 200,
moderation and expired URLs at once. Every row must end in the status its faults call for,
no permanent error may be retried, and every call and every billed image must be accounted
for, exactly, against the simulator's own ledger."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from local_run import render_all
from support import engine_settings

from qwbatch.catalog.table import read_catalog
from qwbatch.storage.stores import LocalStore

ROWS = 200
MAX_ATTEMPTS = 8
PRICE = {"qwen-image-2.0": 0.035, "qwen-image-plus": 0.03}


def storm_manifest(path: Path) -> tuple[Path, set[str]]:
    ids, prompts, models, sizes = [], [], [], []
    moderated = set()
    for i in range(ROWS):
        sync = i % 2 == 0
        prompt = f"storm test image {i}, a lighthouse in heavy rain"
        if i % 25 == 3:
            prompt += " __moderate__"
            moderated.add(f"row-{i}")
        ids.append(f"row-{i}")
        prompts.append(prompt)
        models.append("qwen-image-2.0" if sync else "qwen-image-plus")
        sizes.append("512*512" if sync else "1328*1328")
    pq.write_table(pa.table({"id": ids, "prompt": prompts, "model": models, "size": sizes}), path)
    return path, moderated


def test_fault_storm(sim, tmp_path) -> None:
    sim.configure(
        fast=True,
        seed=2024,
        error_5xx_rate=0.10,
        drop_connection_rate=0.02,
        corrupt_image_rate=0.01,
        error_in_200_rate=0.02,
        expired_url_rate=0.05,
        # 429s: burst protection drawn from the dice (so they come however fast or slow this
        # machine is), and an account that allows far less than our ceiling, in short bursts,
        # with fewer sync calls at once than we may send.
        throttle_rate=0.05,
        rps=None,
        rps_by_model={"qwen-image-2.0": 60.0, "qwen-image-plus": 60.0},
        burst=4,
        max_in_flight=4,
        latency_s=0.03,
        retry_after_s=0.05,
    )
    settings = engine_settings(
        sim, rps=400, max_attempts=MAX_ATTEMPTS, shard_size=100, backoff_max_s=0.05
    )
    manifest, moderated = storm_manifest(tmp_path / "storm.parquet")
    out = tmp_path / "out"
    summary = render_all(manifest, str(out), settings)
    rows = read_catalog(LocalStore(out)).to_pylist()
    ledger = sim.ledger()

    # One terminal row per manifest row, each in the status its faults call for.
    assert sorted(r["row_id"] for r in rows) == sorted(f"row-{i}" for i in range(ROWS))
    statuses = Counter(r["status"] for r in rows)
    assert ledger["throttled"] > 0
    assert ledger["dropped"] > 0
    for row in rows:
        if row["row_id"] in moderated:
            assert (row["status"], row["error_code"]) == ("moderated", "DataInspectionFailed")
            assert row["cost"] == 0
        elif row["status"] == "expired":
            # Generated and billed, but the URL was dead on arrival: recorded apart, at cost.
            assert row["error_code"] == "ResultExpired"
            assert row["cost"] == PRICE[row["model"]]
        elif row["status"] == "failed":
            # Only a retryable fault that outlasted every attempt may end a row as failed.
            assert row["attempts"] == MAX_ATTEMPTS or row["error_code"] == "ImageError", row
        elif row["status"] == "ambiguous":
            assert (row["ambiguous_calls"], row["model"]) == (2, "qwen-image-2.0"), row
        else:
            assert row["status"] == "succeeded", row
            assert row["output_uri"]
            assert row["sha256"]
    assert statuses["moderated"] == len(moderated)
    assert statuses["expired"] > 0
    assert statuses["succeeded"] > ROWS * 0.8

    # No permanent error was retried: one moderation answer per moderated row, no more.
    assert ledger["errors"]["DataInspectionFailed"] == len(moderated)

    # Every call is accounted for, bounded, and reported.
    calls = ledger["requests"]["generation"] + ledger["requests"]["image-synthesis"]
    assert sum(r["attempts"] for r in rows) == summary.attempts == calls
    assert calls <= MAX_ATTEMPTS * ROWS
    print(
        f"\nfault storm: {ROWS} requests took {calls} provider calls "
        f"({calls / ROWS:.2f} per request); statuses {dict(statuses)}"
    )

    # Every billed image is accounted for: harvested (or lost to an expired URL or corrupt
    # bytes, at cost), or reported as possible extra spend from a dropped sync answer.
    assert ledger["billed_images"] == summary.billed_images + summary.possible_extra_images
    assert summary.ambiguous_calls + summary.recovered_tasks == ledger["dropped"]
    # On the async endpoint nothing was billed twice: dropped submissions were found again.
    async_entries = Counter(
        e["prompt_sha256"] for e in ledger["entries"] if e["model"] == "qwen-image-plus"
    )
    assert set(async_entries.values()) == {1}
