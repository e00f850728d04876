"""Requests for the DashScope simulator's tests over real HTTP, and readers for its answers.

The ``client`` fixture (an httpx client with the simulator's key) is in
``tests/simulator/conftest.py``."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import httpx
from PIL import Image

GEN = "/services/aigc/multimodal-generation/generation"
SYN = "/services/aigc/text2image/image-synthesis"
ASYNC = {"X-DashScope-Async": "enable"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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
