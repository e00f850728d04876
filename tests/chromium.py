"""Headless Chromium driven over the DevTools protocol, for screenshot tests.

A plain ``chromium --screenshot`` shoots when its virtual clock says so, which on a loaded
machine can be before an embedded ``data:`` font has decoded. Here the page is loaded, every
font face it declares is awaited (``document.fonts``), and only then is the shot taken: the
same picture however busy the machine is.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

#: Resolves, once every declared font face has loaded (or failed) and two frames were drawn, to
#: the number of faces that failed.
_FONTS_AND_PAINT = """
Promise.all([...document.fonts].map(face => face.load().catch(() => null)))
  .then(() => document.fonts.ready)
  .then(() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done))))
  .then(() => [...document.fonts].filter(face => face.status === "error").length)
"""


def _devtools_port(profile: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    active = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode} before listening")
        lines = active.read_text().splitlines() if active.exists() else []
        if len(lines) >= 2:
            return int(lines[0])
        time.sleep(0.05)
    raise TimeoutError("chromium did not open its DevTools port")


def screenshot(
    page: Path, png: Path, profile: Path, *, width: int = 1200, height: int = 1600
) -> None:
    """Load ``page`` in a fresh headless Chromium, wait for its fonts, write a PNG of it."""
    assert CHROMIUM is not None, "headless Chromium is not installed (.ci/run installs it)"
    profile.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port = _devtools_port(profile, proc, timeout_s=60)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as answer:
            targets = json.load(answer)
        url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        with connect(url, max_size=None, open_timeout=30) as ws:
            ids = iter(range(1, 1_000_000))
            events: list[str] = []

            def call(method: str, **params: Any) -> dict[str, Any]:
                message_id = next(ids)
                ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
                while True:
                    message = json.loads(ws.recv(timeout=60))
                    if "method" in message:
                        events.append(message["method"])
                    elif message.get("id") == message_id:
                        if "error" in message:
                            raise RuntimeError(f"{method}: {message['error']}")
                        return dict(message.get("result", {}))

            def wait_for(event: str) -> None:
                while event not in events:
                    message = json.loads(ws.recv(timeout=60))
                    if "method" in message:
                        events.append(message["method"])

            call("Page.enable")
            # Seen here on a loaded machine, about one load in eight: the page's embedded font
            # face ends in status "error" and the body is cut short, though the file is the
            # same each time. Not understood; such a load is made again (at most three
            # loads), and a page whose font never loads is shot as it is.
            for _ in range(3):
                events.clear()
                call("Page.navigate", url=page.as_uri())
                # The page's own load event (evaluating at once could still see about:blank),
                # then every font face and two painted frames.
                wait_for("Page.loadEventFired")
                failed = call("Runtime.evaluate", expression=_FONTS_AND_PAINT, awaitPromise=True,
                              returnByValue=True)["result"].get("value")  # fmt: skip
                if not failed:
                    break
            shot = call("Page.captureScreenshot", format="png")
        png.write_bytes(base64.b64decode(shot["data"]))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
