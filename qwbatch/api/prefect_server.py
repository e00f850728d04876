"""Prefect's temporary server for one run, out of the terminal's process group.

Without ``PREFECT_API_URL``, Prefect starts a temporary API server as a child process the
first time a flow needs it. That child shares the terminal's process group, so Ctrl-C (which
the terminal sends to the whole group) kills it at once, and the run, unable to record its
flow and task states, hangs instead of stopping cleanly. So ``qwbatch run`` starts the same
server itself, the way Prefect does (``uvicorn … prefect.server.api.server:create_app`` with
the UI off), but in a session of its own, and points the run at it. Only this process
stops it: at exit (after Prefect's own exit handlers), or at once on a second Ctrl-C. If this
process is killed outright, the server notices within a second that its parent is gone and
exits too.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx

from qwbatch.core.errors import TransientError
from qwbatch.core.stop import STOP

#: The server's command: uvicorn, plus a thread that ends it when its parent is gone.
_SERVE = """
import os, runpy, sys, threading, time
parent = os.getppid()
def watch():
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
sys.argv = ["uvicorn", *sys.argv[1:]]
runpy.run_module("uvicorn", run_name="__main__")
"""


@contextlib.contextmanager
def own_server() -> Iterator[None]:
    """For the block, Prefect's API is a temporary server of this process's own (see the
    module's docstring); nothing changes when ``PREFECT_API_URL`` is set."""
    import prefect
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        get_current_settings,
        temporary_settings,
    )

    if PREFECT_API_URL.value():
        yield
        return
    port = _free_port()
    args = [
        *("--app-dir", str(prefect.__module_path__.parent)),
        *("--factory", "prefect.server.api.server:create_app"),
        *("--host", "127.0.0.1", "--port", str(port)),
        *("--log-level", "error", "--lifespan", "on"),
    ]
    env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **get_current_settings().to_environment_variables(exclude_unset=True),
    }
    server = subprocess.Popen(  # noqa: S603 - this interpreter, Prefect's own server
        [sys.executable, "-c", _SERVE, *args], env=env, start_new_session=True
    )

    def stop() -> None:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    # Registered before Prefect registers its own exit handlers (they run first, LIFO), so
    # its last events still reach the server.
    atexit.register(stop)
    STOP.at_hard_exit(server.kill)
    url = f"http://127.0.0.1:{port}/api"
    _wait_healthy(url, server, float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, server: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client() as client:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise TransientError(f"Prefect's temporary server exited ({server.returncode})")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{url}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
    server.kill()
    raise TransientError(f"Prefect's temporary server did not start within {timeout_s:.0f} s")
