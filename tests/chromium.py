"""Headless Chromium driven over the DevTools protocol, for screenshot and page tests.

A plain ``chromium --screenshot`` shoots when its virtual clock says so, which on a loaded
machine can be before an embedded ``data:`` font has decoded. Here the page is loaded, every
font face it declares is awaited (``document.fonts``), and only then is the shot taken: the
same picture however busy the machine is.

:func:`session` gives the page to drive: ``open`` it, ``evaluate`` JavaScript, ``click`` an
element, read ``local_storage`` and catch a ``download`` (Runtime.evaluate does the clicks).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
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


class Session:
    """One page of a headless Chromium, driven over the DevTools protocol."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._ids = iter(range(1, 1_000_000))
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        self._ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=60))
            if "method" in message:
                self.events.append(message)
            elif message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))

    def wait_for(self, event: str, timeout_s: float = 60) -> dict[str, Any]:
        """The first ``event`` received (kept or still to come), removed from the list."""
        deadline = time.monotonic() + timeout_s
        while True:
            for seen in self.events:
                if seen["method"] == event:
                    self.events.remove(seen)
                    return seen
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {event} within {timeout_s} s")
            message = json.loads(self._ws.recv(timeout=left))
            if "method" in message:
                self.events.append(message)

    def open(self, page: Path) -> None:
        """Load ``page`` and wait for its load event."""
        self.events.clear()
        self.call("Page.navigate", url=page.as_uri())
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str, *, wait: bool = False) -> Any:
        """The value of a JavaScript ``expression`` in the page (a promise awaited if
        ``wait``); RuntimeError with the message when it throws."""
        answer = self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=wait, returnByValue=True
        )
        if "exceptionDetails" in answer:
            raise RuntimeError(f"{expression!r}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def click(self, selector: str) -> None:
        """Click the element ``selector`` finds (RuntimeError when there is none)."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")

    def local_storage(self) -> dict[str, str]:
        """The page origin's ``localStorage``, key → value."""
        return dict(self.evaluate("Object.assign({}, localStorage)") or {})

    def download(self, selector: str, folder: Path, timeout_s: float = 30) -> Path:
        """Click ``selector``, which starts a download; the file, once written in ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        self.call(
            "Browser.setDownloadBehavior",
            behavior="allowAndName",
            downloadPath=str(folder),
            eventsEnabled=True,
        )
        self.click(selector)
        begun = self.wait_for("Browser.downloadWillBegin", timeout_s)["params"]
        deadline = time.monotonic() + timeout_s
        while True:
            done = self.wait_for("Browser.downloadProgress", max(deadline - time.monotonic(), 0.1))
            if done["params"]["state"] == "completed":
                return folder / begun["guid"]
            if done["params"]["state"] == "canceled":
                raise RuntimeError("the download was canceled")


@contextmanager
def session(profile: Path, *, width: int = 1200, height: int = 1600) -> Iterator[Session]:
    """A fresh headless Chromium (profile folder ``profile``) and its page, closed after."""
    assert CHROMIUM is not None, "headless Chromium is not installed (.ci/run installs it)"
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "DevToolsActivePort").unlink(missing_ok=True)  # a reused profile's is stale
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
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=30) as answer:
            browser_url = json.load(answer)["webSocketDebuggerUrl"]
        with connect(browser_url, max_size=None, open_timeout=30) as ws:
            driver = Session(ws)
            target = driver.call("Target.getTargets")["targetInfos"]
            page_id = next(t["targetId"] for t in target if t["type"] == "page")
            attached = driver.call("Target.attachToTarget", targetId=page_id, flatten=True)
            yield _PageSession(driver, attached["sessionId"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _PageSession(Session):
    """A Session whose page calls go to one target over the browser's connection (flat
    mode), so browser calls (downloads) and page calls share it."""

    def __init__(self, browser: Session, session_id: str) -> None:
        super().__init__(browser._ws)
        self._ids = browser._ids
        self.events = browser.events
        self._session_id = session_id

    _BROWSER_DOMAINS = ("Browser.", "Target.")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
        if not method.startswith(self._BROWSER_DOMAINS):
            message["sessionId"] = self._session_id
        self._ws.send(json.dumps(message))
        while True:
            answer = json.loads(self._ws.recv(timeout=60))
            if "method" in answer:
                self.events.append(answer)
            elif answer.get("id") == message_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return dict(answer.get("result", {}))


def screenshot(
    page: Path, png: Path, profile: Path, *, width: int = 1200, height: int = 1600
) -> None:
    """Load ``page`` in a fresh headless Chromium, wait for its fonts, write a PNG of it."""
    with session(profile, width=width, height=height) as browser:
        browser.call("Page.enable")
        # Seen here on a loaded machine, about one load in eight: the page's embedded font
        # face ends in status "error" and the body is cut short, though the file is the
        # same each time. Not understood; such a load is made again (at most three
        # loads), and a page whose font never loads is shot as it is.
        for _ in range(3):
            # The page's own load event (evaluating at once could still see about:blank),
            # then every font face and two painted frames.
            browser.open(page)
            if not browser.evaluate(_FONTS_AND_PAINT, wait=True):
                break
        shot = browser.call("Page.captureScreenshot", format="png")
    png.write_bytes(base64.b64decode(shot["data"]))
