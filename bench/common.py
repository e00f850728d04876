"""Helpers shared by the benchmarks: a simulator in its own process, free ports, timing."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from qwbatch.simulator import SimulatorHandle

ROOT = Path(__file__).resolve().parent.parent
BENCH_KEY = "bench-simulator-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def simulator_process(*args: str) -> Iterator[SimulatorHandle]:
    """The simulator in a child process (so it does not share our GIL), until exit."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "qwbatch.simulator",
        "--port",
        str(port),
        "--api-key",
        BENCH_KEY,
        *args,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{root}/_sim/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise RuntimeError(f"simulator did not start: {err}") from None
                time.sleep(0.1)
        yield SimulatorHandle(root, api_key=BENCH_KEY)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def provider_env(sim: SimulatorHandle) -> dict[str, str]:
    return {
        "QWBATCH_DASHSCOPE_BASE_URL": sim.base_url,
        "DASHSCOPE_API_KEY": BENCH_KEY,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        # The ephemeral server's 20 s default is too short on a loaded 2-core machine.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }
