"""The DashScope simulator, over real HTTP: answers' shapes, async tasks, and the rules it
refuses requests by."""

from __future__ import annotations

import time

import httpx
import pytest
from simulator_helpers import (
    ASYNC,
    GEN,
    SYN,
    assert_error,
    data_uri,
    edit,
    fetch,
    open_png,
    poll_until_final,
    t2i,
    task,
    urls_of,
)

from qwbatch.core.model_table import ModelTable, parse_size
from qwbatch.simulator import SimulatorHandle

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
