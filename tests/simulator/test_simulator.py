"""The DashScope simulator, over real HTTP: shapes, rules, limits, faults, ledger, determinism."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image, ImageChops

from qwbatch.core.model_table import ModelTable, parse_size
from qwbatch.simulator import SimulatorHandle
from qwbatch.simulator.__main__ import build_parser, config_from_args
from qwbatch.simulator.render import Recipe, colour, render
from qwbatch.simulator.state import peak_rate

GEN = "/services/aigc/multimodal-generation/generation"
SYN = "/services/aigc/text2image/image-synthesis"
ASYNC = {"X-DashScope-Async": "enable"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------- helpers


def t2i(
    model: str = "qwen-image-2.0", prompt: str = "a lighthouse at dusk", **params: Any
) -> dict[str, Any]:
    return {
        "model": model,
        "input": {"messages": [{"role": "user", "content": [{"text": prompt}]}]},
        "parameters": {"watermark": False, **params},
    }


def edit(model: str, prompt: str, images: list[str], **params: Any) -> dict[str, Any]:
    content: list[dict[str, str]] = [{"image": image} for image in images]
    content.append({"text": prompt})
    return {
        "model": model,
        "input": {"messages": [{"role": "user", "content": content}]},
        "parameters": params,
    }


def task(
    model: str = "qwen-image-plus", prompt: str = "a paper boat", **params: Any
) -> dict[str, Any]:
    return {"model": model, "input": {"prompt": prompt}, "parameters": params}


def data_uri(width: int, height: int, rgb: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), rgb).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def urls_of(body: dict[str, Any]) -> list[str]:
    return [item["image"] for item in body["output"]["choices"][0]["message"]["content"]]


def fetch(client: httpx.Client, url: str) -> bytes:
    response = client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return response.content


def open_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def poll_until_final(
    client: httpx.Client, task_id: str, timeout_s: float = 5.0
) -> tuple[list[str], dict[str, Any]]:
    """Statuses seen (consecutive repeats collapsed) and the final body."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = client.get(f"/tasks/{task_id}").json()
        status = body["output"]["task_status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status not in ("PENDING", "RUNNING"):
            return seen, body
        time.sleep(0.02)
    raise AssertionError(f"task {task_id} still {seen[-1]} after {timeout_s} s")


def assert_error(response: httpx.Response, status: int, code: str, fragment: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"request_id", "code", "message"}
    assert body["code"] == code
    assert fragment in body["message"]


@pytest.fixture
def client(sim: SimulatorHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, headers=sim.auth_headers(), timeout=10) as c:
        yield c


# ---------------------------------------------------------------------------- happy paths


def test_sync_generation_returns_n_images_at_the_requested_size(
    sim: SimulatorHandle, client: httpx.Client
) -> None:
    response = client.post(GEN, json=t2i(size="640*512", n=3, seed=7))

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"output", "usage", "request_id"}
    choice = body["output"]["choices"][0]
    assert (choice["finish_reason"], choice["message"]["role"]) == ("stop", "assistant")
    urls = urls_of(body)
    assert len(urls) == 3
    assert all(url.startswith(sim.root_url + "/results/") and "?Expires=" in url for url in urls)
    assert body["usage"] == {"width": 640, "height": 512, "image_count": 3}
    for url in urls:
        image = open_png(fetch(client, url))
        assert (image.format, image.size) == ("PNG", (640, 512))
    ledger = sim.ledger()
    assert (ledger["billed_images"], ledger["by_model"]) == (3, {"qwen-image-2.0": 3})
    (entry,) = ledger["entries"]
    assert entry["request_id"] == body["request_id"]
    assert (entry["task_id"], entry["model"], entry["images"], entry["seed"]) == (
        None,
        "qwen-image-2.0",
        3,
        7,
    )
    assert len(entry["prompt_sha256"]) == 64


@pytest.mark.parametrize("model", ["qwen-image-plus", "qwen-image-2.0-pro", "qwen-image-max"])
def test_without_a_size_the_model_tables_default_is_used(client: httpx.Client, model: str) -> None:
    body = client.post(GEN, json=t2i(model=model)).json()
    expected = parse_size(ModelTable.load().get(model).default_size)
    assert (body["usage"]["width"], body["usage"]["height"]) == expected


@pytest.mark.parametrize(
    ("style", "keys"),
    [
        ("docs", {"width", "height", "image_count"}),
        ("output", {"output_width", "output_height", "output_image_count"}),
    ],
)
def test_usage_spellings(
    sim: SimulatorHandle, client: httpx.Client, style: str, keys: set[str]
) -> None:
    sim.configure(usage_style=style)
    assert set(client.post(GEN, json=t2i(size="512*512")).json()["usage"]) == keys


def test_alternate_usage_switches_spelling_per_request(
    sim: SimulatorHandle, client: httpx.Client
) -> None:
    sim.configure(usage_style="alternate")
    spellings = {
        "image_count" in client.post(GEN, json=t2i(size="512*512", seed=s)).json()["usage"]
        for s in range(2)
    }
    assert spellings == {True, False}


def test_edit_tints_the_first_image_at_the_last_images_aspect_ratio(client: httpx.Client) -> None:
    red, blue_tall = data_uri(800, 600, (255, 0, 0)), data_uri(300, 600, (0, 0, 255))
    body = client.post(GEN, json=edit("qwen-image-edit-plus", "add a hat", [red, blue_tall]))

    usage = body.json()["usage"]
    width, height = usage["width"], usage["height"]
    assert abs(width / height - 0.5) < 0.02
    assert 0.9 * 1024 * 1024 < width * height < 1.1 * 1024 * 1024
    image = open_png(fetch(client, urls_of(body.json())[0])).convert("RGB")
    assert image.size == (width, height)
    pixel = image.getpixel((width - 5, height // 3))  # away from the caption
    assert isinstance(pixel, tuple)
    r, g, b = pixel[:3]
    assert r > 150  # the first (red) image, tinted
    assert r > max(g, b)


def test_edit_inputs_may_be_loopback_urls_which_are_fetched(
    sim: SimulatorHandle, client: httpx.Client
) -> None:
    generated = urls_of(client.post(GEN, json=t2i(size="512*768")).json())[0]

    body = client.post(GEN, json=edit("qwen-image-edit-max", "make it night", [generated])).json()
    assert abs(body["usage"]["width"] / body["usage"]["height"] - 512 / 768) < 0.02
    assert sim.ledger()["requests"]["results"] == 1  # the simulator fetched its own result

    missing = f"{sim.root_url}/results/{'0' * 32}.png"
    response = client.post(GEN, json=edit("qwen-image-edit-max", "x", [missing]))
    assert_error(response, 400, "BadRequest.InputDownloadFailed", "HTTP 404")


def test_async_task_goes_pending_running_succeeded(
    sim: SimulatorHandle, client: httpx.Client
) -> None:
    sim.configure(queue_s=0.3, latency_s=0.3)
    created = client.post(SYN, json=task(size="1328*1328", seed=3), headers=ASYNC)

    assert created.status_code == 200
    assert created.json()["output"]["task_status"] == "PENDING"
    task_id = created.json()["output"]["task_id"]
    seen, final = poll_until_final(client, task_id)

    assert seen == ["PENDING", "RUNNING", "SUCCEEDED"]
    output = final["output"]
    assert {"submit_time", "scheduled_time", "end_time"} <= set(output)
    (result,) = output["results"]
    assert result["orig_prompt"] == "a paper boat"
    assert result["actual_prompt"].startswith("a paper boat")
    assert final["usage"] == {"image_count": 1}
    assert open_png(fetch(client, result["url"])).size == (1328, 1328)
    ledger = sim.ledger()
    (entry,) = ledger["entries"]
    assert (entry["task_id"], entry["request_id"]) == (task_id, created.json()["request_id"])
    assert ledger["polls"] == ledger["requests"]["tasks"] >= 3


def test_async_needs_the_header_and_an_async_model(client: httpx.Client) -> None:
    assert_error(client.post(SYN, json=task()), 400, "AccessDenied", "synchronous calls")
    assert_error(
        client.post(SYN, json=task(model="qwen-image-2.0"), headers=ASYNC),
        400,
        "InvalidParameter",
        "does not support asynchronous calls",
    )


def test_unknown_and_expired_task_ids_read_unknown(
    sim: SimulatorHandle, client: httpx.Client
) -> None:
    unknown = client.get("/tasks/no-such-task")
    assert unknown.status_code == 200
    assert unknown.json()["output"] == {"task_id": "no-such-task", "task_status": "UNKNOWN"}

    sim.configure(task_ttl_s=0.2)
    task_id = client.post(SYN, json=task(), headers=ASYNC).json()["output"]["task_id"]
    time.sleep(0.3)
    assert client.get(f"/tasks/{task_id}").json()["output"]["task_status"] == "UNKNOWN"


def test_only_a_pending_task_can_be_canceled(sim: SimulatorHandle, client: httpx.Client) -> None:
    sim.configure(queue_s=5.0)
    task_id = client.post(SYN, json=task(), headers=ASYNC).json()["output"]["task_id"]
    assert client.post(f"/tasks/{task_id}/cancel").status_code == 200
    assert client.get(f"/tasks/{task_id}").json()["output"]["task_status"] == "CANCELED"
    assert_error(client.post(f"/tasks/{task_id}/cancel"), 400, "UnsupportedOperation")
    assert sim.ledger()["billed_images"] == 0


# ---------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("headers", "message"),
    [({}, "No API-key provided."), ({"Authorization": "Bearer sk-wrong"}, "Invalid API-key")],
)
def test_a_missing_or_wrong_key_is_refused(
    sim: SimulatorHandle, headers: dict[str, str], message: str
) -> None:
    response = httpx.post(sim.base_url + GEN, json=t2i(), headers=headers)
    assert_error(response, 401, "InvalidApiKey", message)
    assert sim.ledger()["billed_images"] == 0


IMG = data_uri(64, 64, (10, 200, 10))
REFUSALS = {
    "unknown model": (t2i(model="qwen-image-9"), "InvalidParameter", "Model not exist"),
    "no model": ({"input": {}}, "BadRequest.EmptyModel", "model"),
    "too few pixels": (t2i(size="256*256"), "InvalidParameter", "pixels"),
    "not a preset": (
        t2i(model="qwen-image-max", size="1024*1024"),
        "InvalidParameter",
        "not one of",
    ),
    "side too long": (
        edit("qwen-image-edit-plus", "x", [IMG], size="4096*1024"),
        "InvalidParameter",
        "each side",
    ),
    "size on a fixed-size model": (
        edit("qwen-image-edit", "x", [IMG], size="1024*1024"),
        "InvalidParameter",
        "does not accept a size",
    ),
    "size spelled with x": (t2i(size="1024x1024"), "InvalidParameter", "W*H"),
    "n over the fixed n": (t2i(model="qwen-image-max", n=2), "InvalidParameter", "[1, 1]"),
    "n over n_max": (t2i(n=7), "InvalidParameter", "[1, 6]"),
    "prompt too long": (
        t2i(model="qwen-image-max", prompt="x" * 801),
        "InvalidParameter",
        "[1, 800]",
    ),
    "images on a text-to-image model": (
        edit("qwen-image-max", "x", [IMG]),
        "InvalidParameter",
        "does not support image editing",
    ),
    "no image on an edit-only model": (
        t2i(model="qwen-image-edit-plus"),
        "InvalidParameter",
        "Got 0 image items",
    ),
    "four images": (
        edit("qwen-image-edit-plus", "x", [IMG] * 4),
        "InvalidParameter",
        "Got 4 image items",
    ),
    "two texts": (
        {
            **t2i(),
            "input": {"messages": [{"role": "user", "content": [{"text": "a"}, {"text": "b"}]}]},
        },
        "InvalidParameter",
        "exactly one text item",
    ),
    "two turns": (
        {
            **t2i(),
            "input": {
                "messages": [
                    {"role": "user", "content": [{"text": "a"}]},
                    {"role": "user", "content": [{"text": "b"}]},
                ]
            },
        },
        "InvalidParameter",
        "single-turn",
    ),
    "seed out of range": (t2i(seed=-1), "InvalidParameter", "seed"),
    "not an image": (
        edit("qwen-image-edit-plus", "x", ["data:image/png;base64,aGVsbG8="]),
        "InvalidParameter",
        "cannot be opened",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_the_model_tables_rules_are_enforced(
    sim: SimulatorHandle, client: httpx.Client, case: str
) -> None:
    body, code, fragment = REFUSALS[case]
    assert_error(client.post(GEN, json=body), 400, code, fragment)
    ledger = sim.ledger()
    assert ledger["billed_images"] == 0
    assert ledger["errors"] == {code: 1}


def test_the_moderation_word_is_refused(sim: SimulatorHandle, client: httpx.Client) -> None:
    response = client.post(GEN, json=t2i(prompt="a __moderate__ scene"))
    assert_error(response, 400, "DataInspectionFailed", "inappropriate")
    assert_error(
        client.post(SYN, json=task(prompt="__moderate__"), headers=ASYNC),
        400,
        "DataInspectionFailed",
    )
    assert sim.ledger()["billed_images"] == 0


def test_unknown_paths_answer_invalid_url(client: httpx.Client) -> None:
    assert_error(client.post("/services/aigc/nothing"), 404, "InvalidURL")


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


# ---------------------------------------------------------------------------- ledger, config


def test_the_ledger_totals_by_model_and_reset_clears_it(
    sim: SimulatorHandle, client: httpx.Client
) -> None:
    client.post(GEN, json=t2i(size="512*512", n=2))
    client.post(GEN, json=t2i(model="qwen-image-max"))
    ledger = sim.ledger()
    assert ledger["by_model"] == {"qwen-image-2.0": 2, "qwen-image-max": 1}
    assert ledger["billed_images"] == 3
    assert ledger["requests"] == {"generation": 2}

    sim.reset()
    assert (sim.ledger()["billed_images"], sim.ledger()["entries"]) == (0, [])


def test_knobs_are_validated_and_restored(sim: SimulatorHandle) -> None:
    with pytest.raises(ValueError, match="no_such_knob"):
        sim.configure(no_such_knob=1)
    with pytest.raises(ValueError, match="less than or equal to 1"):
        sim.configure(error_5xx_rate=2)
    assert sim.configure(max_in_flight="table").max_in_flight == "table"
    assert sim.configure(latency_s=0.5).latency_s == 0.5
    sim.reset(restore_config=True)
    assert sim.config().latency_s == 0.0
    assert sim.config().api_key == sim.api_key


# ---------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("fast", [False, True])
def test_the_same_request_gives_the_same_bytes(
    sim: SimulatorHandle, client: httpx.Client, fast: bool
) -> None:
    sim.configure(fast=fast)
    body = t2i(size="768*512", n=2, seed=5)
    first = [fetch(client, url) for url in urls_of(client.post(GEN, json=body).json())]
    again = [fetch(client, url) for url in urls_of(client.post(GEN, json=body).json())]
    other = fetch(
        client,
        urls_of(
            client.post(GEN, json={**body, "parameters": {"seed": 6, "size": "768*512"}}).json()
        )[0],
    )

    assert first == again
    assert first[0] != first[1]
    assert other not in first
    assert {open_png(data).size for data in first} == {(768, 512)}


def test_fast_mode_is_fast_at_full_size(sim: SimulatorHandle, client: httpx.Client) -> None:
    sim.configure(fast=True)
    started = time.monotonic()
    for seed in range(10):
        url = urls_of(client.post(GEN, json=t2i(size="2048*2048", seed=seed)).json())[0]
        assert open_png(fetch(client, url)).size == (2048, 2048)
    assert time.monotonic() - started < 2.0


# ---------------------------------------------------------------------------- running it


def test_cli_flags_become_knobs() -> None:
    args = build_parser().parse_args(
        [
            "--port",
            "9000",
            "--fast",
            "--no-rate-limit",
            "--set",
            "error_5xx_rate=0.25",
            "--set",
            'rps_by_model={"qwen-image": 5}',
            "--set",
            "usage_style=output",
        ]
    )
    config = config_from_args(args)
    assert (args.port, config.fast, config.rate_limit) == (9000, True, False)
    assert (config.error_5xx_rate, config.rps_by_model, config.usage_style) == (
        0.25,
        {"qwen-image": 5.0},
        "output",
    )


def test_python_dash_m_serves_the_api() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "qwbatch.simulator", "--port", str(port), "--api-key", "k"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                response = httpx.post(
                    f"http://127.0.0.1:{port}/api/v1{GEN}",
                    json=t2i(size="512*512"),
                    headers={"Authorization": "Bearer k"},
                )
                break
            except httpx.ConnectError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert response.status_code == 200
    finally:
        process.terminate()
        process.wait(10)
        if process.stderr:
            process.stderr.close()


def test_chinese_prompts_are_drawn_with_glyphs_not_boxes() -> None:
    """The placeholder's text uses the bundled Noto Sans CJK: the same characters in another
    order draw another picture (boxes for missing glyphs would all look alike)."""

    def ink(prompt: str) -> Image.Image:
        recipe = Recipe(
            model="qwen-image-2.0", prompt=prompt, seed=3, index=0, count=1, width=512, height=512
        )
        with Image.open(io.BytesIO(render(recipe))) as image:
            rgb = image.convert("RGB")
        tint = colour(prompt, 3, 0)
        # Where the text is: every pixel not of the background colour.
        distance = ImageChops.difference(rgb, Image.new("RGB", rgb.size, tint)).convert("L")
        return Image.eval(distance, lambda v: 255 if v > 40 else 0)

    # Below the header line (model, seed, size), which is the same text in both.
    first, second = ink("灯笼夜市").crop((0, 50, 512, 512)), ink("市夜笼灯").crop((0, 50, 512, 512))
    assert first.histogram()[255] > 500  # text was drawn
    assert ImageChops.difference(first, second).getbbox() is not None
