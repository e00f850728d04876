"""The DashScope simulator: its ledger and knobs, deterministic images, and running it
(``python -m qwbatch.simulator``, its flags)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageChops
from simulator_helpers import GEN, fetch, open_png, t2i, urls_of

from qwbatch.simulator import SimulatorHandle
from qwbatch.simulator.__main__ import build_parser, config_from_args
from qwbatch.simulator.render import Recipe, colour, render

REPO = Path(__file__).resolve().parents[2]


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
