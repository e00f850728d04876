"""Beyond one machine: infra/prefect.yaml deployed on a real Prefect server, two process
workers sharing one run's shards, the manifest and the outputs on S3 (moto over HTTP), and
the DashScope simulator as the account whose rate limit they share.

What the rate assertions check: the shard processes on both workers share one limit through
the Prefect server (``qwbatch.limits.shared``), so what they *offered* the account, not only
what it accepted, stayed within what the shared limit lets out over every WINDOW_S window,
with few 429s; and the catalog is complete.

What the shared limit lets out over a window of W seconds, by design: the rate, R × W, and
a burst of BURST requests — its bucket holds a lease and a half (one lease is one request at
this rate), so a lease can be granted half a lease early once, and a send reaches the
simulator a loop turn or a round trip after its grant, so a window's edge can catch one more.
Over WINDOW_S = 10 s that is R + 5 %, with no room to spare: one request more — a grant
lost from the count, a worker pacing itself alone — fails the test.

The simulator's bucket holds its default second of traffic (RATE requests), like the
provider's burst protection. A bucket of one request would be stricter than a rate limit
means: two workers that share the rate correctly still send, now and then, two requests less
than 1 / RATE apart (each spends its own lease), and such a bucket answers the second with a
429. The bigger bucket lets no overshoot pass unseen: the rates are asserted on what the
workers offered and what the simulator admitted over every WINDOW_S window.
"""

from __future__ import annotations

import io
import json
import secrets
import sys
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures_s3 import FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY, REGION
from prefect_cluster import PREFECT, PrefectCluster

from qwbatch.simulator.state import peak_rate

REPO = Path(__file__).resolve().parents[2]
POOL = "qwbatch-process"
MODEL = "qwen-image-2.0"
#: The account's rate limit (requests per second): the simulator's, and the client's setting.
#: Low enough that shards running at once offer more than it.
RATE = 4.0
#: Rates are measured over windows this long (seconds)...
WINDOW_S = 10.0
#: ...and may exceed RATE × WINDOW_S by this many requests (the module docstring says why).
BURST = 2
ROWS = 60
SHARD_SIZE = 10
#: Shards per shard flow run: 3 flow runs, each a process start-up (seconds of CPU here).
SHARDS_PER_RUN = 2
#: Flow runs at once per worker. The parent holds one slot on its worker, so neither worker
#: can take all three shard flow runs: both must execute some.
WORKER_LIMIT = 2
SECRET_BLOCK = "e2e-dashscope-api-key"

_SECRET_SETUP = f"""
import os
from prefect.blocks.system import Secret
Secret(value=os.environ["E2E_SECRET_VALUE"]).save({SECRET_BLOCK!r})
"""


def _manifest() -> pa.Table:
    ids = [f"item-{i:03d}" for i in range(ROWS)]
    return pa.table({"id": ids, "prompt": [f"product photo of item {i}" for i in range(ROWS)]})


def _catalog_rows(s3_client, bucket: str, prefix: str) -> list[dict]:
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    return [
        row
        for key in keys
        if key.endswith(".parquet")
        for row in pq.read_table(
            io.BytesIO(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
        ).to_pylist()
    ]


def _wait_for_workers(cluster: PrefectCluster, names: set[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with cluster.api() as api:
        while True:
            workers = api.post(f"/work_pools/{POOL}/workers/filter", json={}).json()
            online = {w["name"] for w in workers if w["status"] == "ONLINE"}
            if names <= online:
                return
            assert time.monotonic() < deadline, f"workers online: {online}; wanted {names}"
            time.sleep(0.5)


@pytest.mark.slow
# Minutes of CPU for a dozen Python processes: on a busy 2-core machine the wall time grows.
@pytest.mark.timeout(600)
def test_render_manifest_deployment_spreads_shards_over_two_workers(
    sim, aws_credentials, s3_settings, s3_client, s3_bucket, tmp_path: Path
) -> None:
    api_key = "sk-e2e-" + secrets.token_hex(12)
    sim.configure(api_key=api_key, fast=True, rps_by_model={MODEL: RATE})  # burst: 1 s
    pq.write_table(_manifest(), sink := io.BytesIO())
    s3_client.put_object(Bucket=s3_bucket, Key="manifests/e2e.parquet", Body=sink.getvalue())
    manifest = f"s3://{s3_bucket}/manifests/e2e.parquet"
    out = f"s3://{s3_bucket}/renders"

    cluster = PrefectCluster(tmp_path, auth_string=f"qwbatch:{secrets.token_urlsafe(18)}")
    began = time.monotonic()
    try:
        cluster.start(cwd=REPO)
        code = {"PYTHONPATH": str(REPO)}  # the code under test, as `pip install .` would
        # As an operator would: the deploy script (pool, deployments, queue limit) and a
        # Secret block holding the provider key, side by side.
        secret_setup = cluster.spawn(
            "secret-setup",
            [sys.executable, "-c", _SECRET_SETUP],
            cluster.env("secret-setup", {"E2E_SECRET_VALUE": api_key}),
            REPO,
        )
        deploy_began = time.monotonic()
        cluster.run(
            "deploy",
            ["sh", "infra/deploy.sh", POOL, "process"],
            cluster.env(
                "deploy",
                {**code, "QWBATCH_NIGHTLY_MANIFEST": manifest, "QWBATCH_NIGHTLY_OUT": out},
            ),
            REPO,
        )
        deploy_s = time.monotonic() - deploy_began
        assert secret_setup.popen.wait(timeout=120) == 0, secret_setup.tail()
        worker_env = {
            **code,
            # Secrets: the provider key from a Secret block, S3 credentials from the env.
            "QWBATCH_SECRET_BLOCKS": json.dumps({"DASHSCOPE_API_KEY": SECRET_BLOCK}),
            "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            "QWBATCH_S3_ENDPOINT_URL": s3_settings.s3_endpoint_url,
            "QWBATCH_S3_REGION": REGION,
            "QWBATCH_S3_ADDRESSING_STYLE": "path",
            "QWBATCH_DASHSCOPE_BASE_URL": sim.base_url,
            "QWBATCH_BACKOFF_BASE_S": "0.2",
            "QWBATCH_BACKOFF_MAX_S": "2",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
        }
        workers = {"worker-a", "worker-b"}
        for name in sorted(workers):
            cluster.spawn(
                name,
                [
                    PREFECT,
                    "worker",
                    "start",
                    "--pool",
                    POOL,
                    "--name",
                    name,
                    "--limit",
                    str(WORKER_LIMIT),
                ],
                cluster.env(name, worker_env),
                REPO,
            )
        _wait_for_workers(cluster, workers, timeout_s=60)
        workers_s = time.monotonic() - deploy_began - deploy_s

        with cluster.api() as api:
            deployment = api.get("/deployments/name/render-manifest/render-manifest").json()
            run_began = time.monotonic()
            parent = (
                api.post(
                    f"/deployments/{deployment['id']}/create_flow_run",
                    json={
                        "parameters": {
                            "manifest": manifest,
                            "out": out,
                            "shard_size": SHARD_SIZE,
                            "shards_per_run": SHARDS_PER_RUN,
                            "rps": RATE,
                        }
                    },
                )
                .raise_for_status()
                .json()
            )
        parent = cluster.wait_for_flow_run(parent["id"], timeout_s=300)
        run_s = time.monotonic() - run_began
        assert parent["state"]["type"] == "COMPLETED", cluster.report()

        with cluster.api() as api:
            shards_deployment = api.get("/deployments/name/render-shards/render-shards").json()
            children = api.post(
                "/flow_runs/filter",
                json={"deployments": {"id": {"any_": [shards_deployment["id"]]}}},
            ).json()
            nightly = api.get("/deployments/name/render-manifest/nightly-catalog").json()
            logs = api.post(
                "/logs/filter",
                json={
                    "logs": {"flow_run_id": {"any_": [parent["id"]] + [c["id"] for c in children]}}
                },
            ).json()
            deployments = [deployment, shards_deployment, nightly]
            runs_queue = api.get(f"/work_pools/{POOL}/queues/runs").json()
        unauthenticated = httpx.post(f"{cluster.api_url}/flow_runs/filter", json={})
    finally:
        cluster.close()
    total_s = time.monotonic() - began
    ledger = sim.ledger()
    admitted = peak_rate(ledger["admitted_at"], WINDOW_S)
    offered = peak_rate(ledger["offered_at"], WINDOW_S)
    print(  # the measurements: seen with `pytest -s`
        f"\nscale-out e2e: server start-up {cluster.startup_s:.1f} s, deploy {deploy_s:.1f} s, "
        f"workers online {workers_s:.1f} s later, "
        f"run {run_s:.1f} s ({ROWS} images, {len(children)} shard flow runs), "
        f"total {total_s:.1f} s; peak over {WINDOW_S:.0f} s windows: admitted "
        f"{admitted:.2f}/s, offered {offered:.2f}/s (limit {RATE:.1f}/s); "
        f"429s {ledger['throttled']}"
    )

    # Both workers executed shards: the shard flow runs all completed, on both workers.
    assert len(children) == ROWS // SHARD_SIZE // SHARDS_PER_RUN
    assert {c["state"]["type"] for c in children} == {"COMPLETED"}
    by_worker = {c["labels"].get("prefect.worker.name") for c in children}
    assert by_worker == workers
    assert all(c["parent_task_run_id"] for c in children)  # linked to the parent as subflows

    # The account's rate: what the shards offered it, together, kept to the shared limit.
    most = (RATE * WINDOW_S + BURST) / WINDOW_S
    assert offered <= most, (offered, most)
    assert admitted <= most, (admitted, most)
    assert ledger["throttled"] <= ROWS * 0.05, ledger["throttled"]
    assert ledger["billed_images"] == ROWS  # each image paid once, however many 429s

    # The catalog is complete: every row once, succeeded, its image in the bucket.
    rows = _catalog_rows(s3_client, s3_bucket, "renders/catalog/")
    assert sorted(r["row_id"] for r in rows) == sorted(_manifest()["id"].to_pylist())
    assert {r["status"] for r in rows} == {"succeeded"}
    assert len({r["run_id"] for r in rows}) == 1
    for row in rows:
        key = row["output_uri"].removeprefix(f"s3://{s3_bucket}/")
        assert s3_client.head_object(Bucket=s3_bucket, Key=key)["ContentLength"] == row["bytes"]

    # The nightly deployment from the same file: cron, timezone, never two at once.
    (schedule,) = nightly["schedules"]
    assert schedule["schedule"] == {
        "cron": "0 2 * * *",
        "timezone": "Asia/Singapore",
        "day_or": True,
    }
    assert schedule["active"] is True
    assert nightly["global_concurrency_limit"]["limit"] == 1
    assert nightly["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    assert nightly["parameters"]["manifest"] == manifest
    assert runs_queue["concurrency_limit"] == 2  # set by infra/deploy.sh

    # Closed by default, and the key never left its Secret block.
    assert unauthenticated.status_code == 401
    assert api_key not in json.dumps(deployments)
    assert api_key not in json.dumps(children) + json.dumps(parent)
    assert api_key not in json.dumps(logs)
    for process in cluster.processes:
        assert api_key not in process.log.read_text(errors="replace"), process.name
    assert api_key not in json.dumps(rows, default=str)
