"""The simulator's edit endpoint: a visible, deterministic edit of every input, the inputs it
received in the ledger, and (when asked) the provider's side limits."""

from __future__ import annotations

import base64
import hashlib
import io

import httpx
import pytest
from PIL import Image

from qwbatch.simulator import SimulatorHandle

GEN = "/services/aigc/multimodal-generation/generation"


def png(size: tuple[int, int], rgb: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def body(images: list[bytes], prompt: str = "Put Image 2 next to Image 1") -> dict[str, object]:
    content: list[dict[str, str]] = [
        {"image": "data:image/png;base64," + base64.b64encode(i).decode()} for i in images
    ]
    content.append({"text": prompt})
    return {
        "model": "qwen-image-edit-plus",
        "input": {"messages": [{"role": "user", "content": content}]},
        "parameters": {"size": "1024*768", "seed": 5},
    }


@pytest.fixture
def client(sim: SimulatorHandle):
    with httpx.Client(base_url=sim.base_url, headers=sim.auth_headers(), timeout=30) as c:
        yield c


def result(client: httpx.Client, payload: dict[str, object]) -> bytes:
    response = client.post(GEN, json=payload)
    assert response.status_code == 200, response.text
    url = response.json()["output"]["choices"][0]["message"]["content"][0]["image"]
    return httpx.get(url).content


def test_every_input_is_visible_and_the_edit_is_deterministic(
    sim: SimulatorHandle, client: httpx.Client
) -> None:
    red, blue = png((800, 600), (230, 20, 20)), png((400, 400), (20, 20, 230))
    first = result(client, body([red, blue]))
    assert result(client, body([red, blue])) == first
    with Image.open(io.BytesIO(first)) as image:
        rgb = image.convert("RGB")
        r, g, b = rgb.getpixel((rgb.width - 10, rgb.height // 2))  # Image 1, tinted
        assert r > max(g, b)
        side, margin = 768 // 5, 768 // 24
        inset = rgb.getpixel((margin + side // 2, margin * 4 + side // 2))  # Image 2's inset
        assert inset[2] > max(inset[:2])
    # A different instruction is a different edit.
    assert result(client, body([red, blue], "Make it night")) != first


def test_the_ledger_lists_the_inputs_received(sim: SimulatorHandle, client: httpx.Client) -> None:
    red, blue = png((800, 600), (230, 20, 20)), png((400, 400), (20, 20, 230))
    result(client, body([red, blue]))
    (entry,) = sim.ledger()["entries"]
    assert entry["inputs"] == [
        {
            "sha256": hashlib.sha256(red).hexdigest(),
            "format": "PNG",
            "width": 800,
            "height": 600,
            "bytes": len(red),
        },
        {
            "sha256": hashlib.sha256(blue).hexdigest(),
            "format": "PNG",
            "width": 400,
            "height": 400,
            "bytes": len(blue),
        },
    ]


def test_strict_input_sides_refuses_out_of_range_inputs(
    sim: SimulatorHandle, client: httpx.Client
) -> None:
    small = png((200, 150), (1, 2, 3))
    assert client.post(GEN, json=body([small])).status_code == 200  # lenient by default
    sim.configure(strict_input_sides=True)
    response = client.post(GEN, json=body([small]))
    assert response.status_code == 400
    assert response.json()["code"] == "InvalidParameter"
    assert "must be within [384, 3072] pixels" in response.json()["message"]
    assert sim.ledger()["billed_images"] == 1
