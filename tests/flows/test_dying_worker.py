"""A worker machine dies mid-shard: a Prefect server on PostgreSQL (as production runs it),
``infra/deploy.sh``, three process workers, a manifest on S3 (moto over HTTP), the simulator's
async model. One worker that runs shards (not the run's own flow) is killed with everything
below it, as a machine dies. The run's flow notices its shard flow runs fell silent (their
shard leases stopped being renewed), marks them crashed and starts their unfinished shards
on another worker, which collects the tasks the dead one had submitted by their journaled
ids; and the Prefect server restarts while the run waits. Every image is billed once, none
submitted twice, the shared rate limit holds (+5 %), the catalog is complete."""

from __future__ import annotations

import io
import secrets
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures_s3 import FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY, REGION
from postgres_server import PostgresServer, postgres_bin
from prefect_cluster import PREFECT, PrefectCluster

from qwbatch.catalog.table import read_catalog
from qwbatch.simulator.state import peak_rate
from qwbatch.storage.stores import S3Store

REPO = Path(__file__).resolve().parents[2]
POOL = "qwbatch-process"
MODEL = "qwen-image-plus"  # the simulator's async model: submit, then poll the task
ROWS = 120
SHARD_SIZE = 15
RATE = 8.0
#: Seconds each simulated task runs: tasks are in flight when the worker dies.
TASK_S = 3.0
#: Lease lifetime on the workers (seconds): a silent shard flow run is lost after 3 of them.
LEASE_TTL_S = 10
#: Rates are measured over windows this long (seconds): 5 % of RATE is two requests more. Over
#: 2.5 s windows (one request more) two passing runs peaked exactly at the bound, 8.40/s: the
#: shared limit's leases let one request through at a window's edge, which is not a rate.
WINDOW_S = 2 / (0.05 * RATE)
WORKERS = ("worker-a", "worker-b", "worker-c")


def _flow_runs(cluster: PrefectCluster, deployment: str) -> list[dict]:
    with cluster.api() as api:
        found = api.get(f"/deployments/name/{deployment}").raise_for_status().json()
        return list(
            api.post(
                "/flow_runs/filter", json={"deployments": {"id": {"any_": [found["id"]]}}}
            ).json()
        )


def _victim(cluster: PrefectCluster, parent_id: str) -> tuple[str, dict] | None:
    """A worker running a shard flow run (not the parent's), and that flow run."""
    with cluster.api() as api:
        parent = api.get(f"/flow_runs/{parent_id}").json()
    spared = parent["labels"].get("prefect.worker.name")
    for run in _flow_runs(cluster, "render-shards/render-shards"):
        worker = run["labels"].get("prefect.worker.name")
        if run["state"]["type"] == "RUNNING" and worker and worker != spared:
            return worker, run
    return None


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL is not installed")
def test_a_dead_workers_shards_run_again_and_collect_its_tasks(
    sim, aws_credentials, s3_settings, s3_client, s3_bucket, tmp_path: Path
) -> None:
    api_key = "sk-dying-" + secrets.token_hex(12)
    sim.configure(api_key=api_key, fast=True, latency_s=TASK_S, rps_by_model={MODEL: RATE})
    table = pa.table(
        {
            "id": [f"row-{i:03d}" for i in range(ROWS)],
            "prompt": [f"a lighthouse, study {i}" for i in range(ROWS)],
            "model": [MODEL] * ROWS,
        }
    )
    pq.write_table(table, sink := io.BytesIO())
    s3_client.put_object(Bucket=s3_bucket, Key="manifests/m.parquet", Body=sink.getvalue())
    manifest, out = f"s3://{s3_bucket}/manifests/m.parquet", f"s3://{s3_bucket}/renders"

    postgres = PostgresServer()
    cluster = PrefectCluster(tmp_path, auth_string=f"qwbatch:{secrets.token_urlsafe(18)}")
    began = time.monotonic()
    try:
        postgres.start()
        cluster.start(cwd=REPO, extra_env={"PREFECT_API_DATABASE_CONNECTION_URL": postgres.url})
        code = {"PYTHONPATH": str(REPO)}
        deploy = ["sh", "infra/deploy.sh", POOL, "process"]
        cluster.run("deploy", deploy, cluster.env("deploy", code), REPO)
        worker_env = {
            **code,
            "DASHSCOPE_API_KEY": api_key,
            "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            "QWBATCH_S3_ENDPOINT_URL": s3_settings.s3_endpoint_url or "",
            "QWBATCH_S3_REGION": REGION,
            "QWBATCH_S3_ADDRESSING_STYLE": "path",
            "QWBATCH_DASHSCOPE_BASE_URL": sim.base_url,
            "QWBATCH_BACKOFF_BASE_S": "0.2",
            "QWBATCH_BACKOFF_MAX_S": "2",
            "QWBATCH_POLL_INTERVAL_S": "0.5",
            "QWBATCH_POLL_MAX_INTERVAL_S": "1",
            "QWBATCH_LEASE_TTL_S": str(LEASE_TTL_S),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
        }
        workers = {
            name: cluster.spawn(
                name,
                [PREFECT, "worker", "start", "--pool", POOL, "--name", name, "--limit", "3"],
                cluster.env(name, worker_env),
                REPO,
            )
            for name in WORKERS
        }
        cluster.wait_for_workers(POOL, set(WORKERS), timeout_s=90)

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
                            "rps": RATE,
                        }
                    },
                )
                .raise_for_status()
                .json()
            )
        # A worker dies once one of its shard flow runs has submitted tasks for a while.
        deadline = time.monotonic() + 180
        while True:
            found = _victim(cluster, parent["id"])
            if found is not None and sim.ledger()["requests"].get("image-synthesis", 0) >= 20:
                victim, doomed = found
                break
            assert time.monotonic() < deadline, cluster.report()
            time.sleep(0.5)
        time.sleep(2.0)
        killed_at = time.monotonic() - run_began
        killed = cluster.kill_tree(workers[victim])
        # And the Prefect server restarts while the run's flow waits for the lost shards.
        time.sleep(3.0)
        away_s = cluster.restart_server(REPO)
        parent = cluster.wait_for_flow_run(parent["id"], timeout_s=240)
        run_s = time.monotonic() - run_began
        children = _flow_runs(cluster, "render-shards/render-shards")
    finally:
        cluster.close()
        postgres.stop()
    total_s = time.monotonic() - began
    ledger = sim.ledger()
    billed = Counter(e["prompt_sha256"] for e in ledger["entries"])
    submitted = ledger["requests"].get("image-synthesis", 0)
    offered = peak_rate(ledger["offered_at"], WINDOW_S)
    admitted = peak_rate(ledger["admitted_at"], WINDOW_S)
    print(  # the measurements: seen with `pytest -s`
        f"\ndying worker: killed {victim} ({len(killed)} processes) {killed_at:.0f} s into the "
        f"run, then the server restarted (API away {away_s:.0f} s); "
        f"run {run_s:.0f} s, total {total_s:.0f} s (PostgreSQL + server "
        f"{cluster.startup_s:.0f} s); billed {sum(billed.values())} for {len(billed)} distinct "
        f"= {sum(billed.values()) / max(1, len(billed)):.3f}; tasks submitted {submitted}; "
        f"peak over {WINDOW_S:.1f} s windows: offered {offered:.2f}/s, admitted "
        f"{admitted:.2f}/s (limit {RATE:.1f}/s), 429s {ledger['throttled']}; "
        f"shard flow runs {len(children)}: "
        + ", ".join(f"{c['name']} {c['state']['type']}" for c in children)
    )

    assert parent["state"]["type"] == "COMPLETED", cluster.report()
    # The dead worker's flow run was found lost and its shards ran again elsewhere.
    by_name = {c["name"]: c for c in children}
    assert by_name[doomed["name"]]["state"]["type"] == "CRASHED"
    again = [c for c in children if c["name"].startswith(f"{doomed['name']}-r")]
    assert again, list(by_name)
    assert {c["state"]["type"] for c in again} == {"COMPLETED"}
    assert again[0]["labels"].get("prefect.worker.name") != victim
    # Billed once per image; the dead worker's tasks collected by id, not submitted again.
    assert len(billed) == ROWS
    assert set(billed.values()) == {1}
    assert submitted == ROWS
    # The shared rate limit held through the kill and the restart (+5 %).
    assert offered <= RATE * 1.05, (offered, RATE)
    # The catalog: every row once, one terminal outcome each.
    rows = read_catalog(S3Store(s3_client, s3_bucket, "renders")).to_pylist()
    assert sorted(r["row_id"] for r in rows) == sorted(table["id"].to_pylist())
    assert {r["status"] for r in rows} == {"succeeded"}
