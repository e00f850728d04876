"""The DashScope simulator, over real HTTP: rate limits, in-flight caps and expiring URLs,
and the faults it injects (seeded, billed as the provider bills them)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from simulator_helpers import (
    ASYNC,
    GEN,
    PNG_MAGIC,
    SYN,
    assert_error,
    fetch,
    open_png,
    poll_until_final,
    t2i,
    task,
    urls_of,
)

from qwbatch.simulator import SimulatorHandle
from qwbatch.simulator.state import peak_rate

# ---------------------------------------------------------------------------- limits


def test_each_model_has_its_own_token_bucket(sim: SimulatorHandle, client: httpx.Client) -> None:
    sim.configure(rps_by_model={"qwen-image-max": 0.5}, retry_after_s=2)
    body = t2i(model="qwen-image-max", size="1328*1328")

    assert client.post(GEN, json=body).status_code == 200
    throttled = client.post(GEN, json=body)
    assert client.post(GEN, json=t2i(size="512*512")).status_code == 200  # another model

    assert throttled.json()["code"] == "Throttling.RateQuota"
    assert throttled.json()["message"] == "Requests rate limit exceeded, please try again later."
    assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "2")
    ledger = sim.ledger()
    assert (ledger["throttled"], ledger["billed_images"]) == (1, 2)


def test_the_table_rps_applies_unless_limiting_is_off(
    sim: SimulatorHandle, client: httpx.Client
) -> None:
    sim.configure(rps=None)  # qwen-image-max: 1 request per second in the table
    body = t2i(model="qwen-image-max")
    assert [client.post(GEN, json=body).status_code for _ in range(2)] == [200, 429]
    sim.configure(rate_limit=False)
    assert {client.post(GEN, json=body).status_code for _ in range(3)} == {200}


def test_the_ledger_times_offered_and_admitted_submissions(
    sim: SimulatorHandle, client: httpx.Client
) -> None:
    sim.configure(rps_by_model={"qwen-image-max": 0.5})
    before = time.time()
    codes = [client.post(GEN, json=t2i(model="qwen-image-max")).status_code for _ in range(3)]
    client.post(SYN, json=task(), headers=ASYNC)  # task creation is a submission too
    ledger = sim.ledger()

    assert codes == [200, 429, 429]
    assert len(ledger["offered_at"]) == 4
    assert len(ledger["admitted_at"]) == 2
    assert all(before <= t <= time.time() for t in ledger["offered_at"])
    assert set(ledger["admitted_at"]) <= set(ledger["offered_at"])


def test_peak_rate_counts_the_busiest_window() -> None:
    assert peak_rate([], 1.0) == 0.0
    # 10 events a second for 3 s, plus a burst of 5 at t=1.5: the burst window holds 15.
    times = [i / 10 for i in range(30)] + [1.5] * 5
    assert peak_rate(times, 1.0) == pytest.approx(16.0)  # both ends of the window count
    assert peak_rate(times, 3.0) == pytest.approx(35 / 3)
    with pytest.raises(ValueError, match="positive"):
        peak_rate(times, 0)


def test_the_in_flight_cap_throttles_concurrent_calls(sim: SimulatorHandle) -> None:
    sim.configure(max_in_flight=1, latency_s=0.4)

    def call(seed: int) -> int:
        response = httpx.post(
            sim.base_url + GEN,
            json=t2i(size="512*512", seed=seed),
            headers=sim.auth_headers(),
            timeout=10,
        )
        return response.status_code

    with ThreadPoolExecutor(2) as pool:
        assert sorted(pool.map(call, range(2))) == [200, 429]
    assert sim.ledger()["errors"] == {"Throttling": 1}


def test_throttle_rate_draws_burst_429s_from_the_dice(
    sim: SimulatorHandle, client: httpx.Client
) -> None:
    sim.configure(throttle_rate=0.5, retry_after_s=2, seed=7)
    bodies = [t2i(size="512*512", seed=i) for i in range(40)]
    first = [client.post(GEN, json=body) for body in bodies]
    throttled = [r for r in first if r.status_code == 429]
    assert 5 < len(throttled) < 35  # about half, whatever the timing
    assert {r.json()["code"] for r in throttled} == {"Throttling"}
    assert "increased too quickly" in throttled[0].json()["message"]
    assert throttled[0].headers["Retry-After"] == "2"
    # A retry rolls again; a rerun of the same workload sees the same 429s.
    retried = [
        client.post(GEN, json=b).status_code
        for b, r in zip(bodies, first, strict=True)
        if r.status_code == 429
    ]
    assert 200 in retried
    sim.reset()
    sim.configure(throttle_rate=0.5, retry_after_s=2, seed=7)
    again = [client.post(GEN, json=body).status_code for body in bodies]
    assert again == [r.status_code for r in first]


def test_result_urls_expire_like_oss(sim: SimulatorHandle, client: httpx.Client) -> None:
    sim.configure(url_ttl_s=0.5)
    url = urls_of(client.post(GEN, json=t2i(size="512*512")).json())[0]
    expires = int(parse_qs(urlsplit(url).query)["Expires"][0])
    assert abs(expires - (time.time() + 0.5)) < 2
    assert fetch(client, url).startswith(PNG_MAGIC)

    time.sleep(0.6)
    expired = client.get(url)
    assert expired.status_code == 403
    assert "<Code>AccessDenied</Code>" in expired.text
    assert "Request has expired" in expired.text
    unknown = client.get(f"{sim.root_url}/results/{'f' * 32}.png")
    assert (unknown.status_code, "<Code>NoSuchKey</Code>" in unknown.text) == (404, True)


# ---------------------------------------------------------------------------- faults


def test_5xx_faults_are_json_500s_or_gateway_503s_and_bill_nothing(
    sim: SimulatorHandle, client: httpx.Client
) -> None:
    sim.configure(error_5xx_rate=1.0)
    responses = [client.post(GEN, json=t2i(size="512*512", seed=s)) for s in range(8)]

    assert {r.status_code for r in responses} == {500, 503}
    first_500 = next(r for r in responses if r.status_code == 500)
    assert_error(first_500, 500, "InternalError")
    assert all("<html>" in r.text for r in responses if r.status_code == 503)
    assert sim.ledger()["billed_images"] == 0


def test_a_dropped_connection_was_still_billed(sim: SimulatorHandle, client: httpx.Client) -> None:
    sim.configure(drop_connection_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(GEN, json=t2i(n=2, size="512*512"))
    ledger = sim.ledger()
    assert (ledger["billed_images"], ledger["dropped"]) == (2, 1)

    sim.configure(drop_connection_rate=0.0)
    assert client.post(GEN, json=t2i(size="512*512")).status_code == 200


def test_a_dropped_task_creation_still_runs_and_bills(
    sim: SimulatorHandle, client: httpx.Client
) -> None:
    sim.configure(drop_connection_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(SYN, json=task(), headers=ASYNC)
    deadline = time.monotonic() + 5
    while sim.ledger()["billed_images"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    (entry,) = sim.ledger()["entries"]
    assert entry["task_id"] is not None


def test_corrupt_images_are_a_truncated_copy(sim: SimulatorHandle, client: httpx.Client) -> None:
    body = t2i(size="512*512", seed=11)
    good = fetch(client, urls_of(client.post(GEN, json=body).json())[0])
    sim.configure(corrupt_image_rate=1.0)
    bad = fetch(client, urls_of(client.post(GEN, json=body).json())[0])

    assert bad.startswith(PNG_MAGIC)
    assert good.startswith(bad)
    assert len(bad) < len(good)
    with pytest.raises(OSError, match="truncated"):
        open_png(bad)


def test_an_error_inside_a_200_has_no_output_and_bills_nothing(
    sim: SimulatorHandle, client: httpx.Client
) -> None:
    sim.configure(error_in_200_rate=1.0)
    response = client.post(GEN, json=t2i(size="512*512"))
    assert response.status_code == 200
    assert set(response.json()) == {"request_id", "code", "message"}
    assert response.json()["code"] == "InternalError"
    assert sim.ledger()["billed_images"] == 0


def test_partial_failures_return_and_bill_only_the_successes(
    sim: SimulatorHandle, client: httpx.Client
) -> None:
    sim.configure(partial_failure_rate=0.5)
    billed, partial = 0, None
    for seed in range(10):
        response = client.post(GEN, json=t2i(n=6, size="512*512", seed=seed))
        if response.status_code == 200:
            count = response.json()["usage"]["image_count"]
            assert count == len(urls_of(response.json()))
            billed += count
            partial = partial or (0 < count < 6)
    assert partial
    assert sim.ledger()["billed_images"] == billed


def test_async_partial_failures_list_item_errors(
    sim: SimulatorHandle, client: httpx.Client, tmp_path: Path
) -> None:
    extra = tmp_path / "models.toml"
    extra.write_text('[models."qwen-image-plus"]\nn_max = 4\n')  # extends the bundled row
    sim.configure(models_file=str(extra), partial_failure_rate=0.5)
    for seed in range(10):
        created = client.post(SYN, json=task(n=4, seed=seed), headers=ASYNC).json()
        _, final = poll_until_final(client, created["output"]["task_id"])
        results = final["output"].get("results", [])
        failed = [r for r in results if "code" in r]
        if final["output"]["task_status"] == "SUCCEEDED" and failed:
            break
    else:
        pytest.fail("no partly failed task in 10 tries")
    assert all(r["code"] and r["message"] and "url" not in r for r in failed)
    assert final["usage"]["image_count"] == len(results) - len(failed)
    assert final["output"]["task_metrics"]["FAILED"] == len(failed)


def test_a_failed_task_reports_code_and_message(sim: SimulatorHandle, client: httpx.Client) -> None:
    sim.configure(task_failure_rate=1.0)
    task_id = client.post(SYN, json=task(), headers=ASYNC).json()["output"]["task_id"]
    seen, final = poll_until_final(client, task_id)
    assert seen[-1] == "FAILED"
    assert final["output"]["code"] == "InternalError.Algo"
    assert final["output"]["message"]
    assert sim.ledger()["billed_images"] == 0


def test_latency_is_added_to_sync_calls(sim: SimulatorHandle, client: httpx.Client) -> None:
    sim.configure(latency_s=0.3)
    started = time.monotonic()
    assert client.post(GEN, json=t2i(size="512*512")).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_faults_are_reproducible_for_a_seed(sim: SimulatorHandle, client: httpx.Client) -> None:
    def statuses() -> list[int]:
        return [client.post(GEN, json=t2i(size="512*512", seed=s)).status_code for s in range(12)]

    sim.configure(error_5xx_rate=0.5, seed=42)
    first = statuses()
    sim.reset()  # forgets how often each request was seen, keeps the knobs
    assert statuses() == first
    assert len(set(first)) > 1
