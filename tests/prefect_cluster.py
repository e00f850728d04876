"""A real Prefect server and process workers as subprocesses, for the scale-out test.

``PrefectCluster`` starts ``prefect server start`` on a free loopback port (SQLite in a
temporary PREFECT_HOME, analytics off, the UI off, API authentication on), runs ``prefect``
commands against it, starts ``prefect worker start`` processes, and talks to the REST API
with httpx. ``close()`` ends every process it started and their descendants (flow-run
processes included): SIGTERM to each process group, then SIGKILL to whatever is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

PREFECT = str(Path(sys.executable).with_name("prefect"))
#: Environment prefixes not passed on from the test process: each process gets its own.
_SCRUBBED = ("PREFECT_", "QWBATCH_", "AWS_", "DASHSCOPE_")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env() -> dict[str, str]:
    """The test process's environment without any Prefect, qwbatch, AWS or DashScope setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process; None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[19])


def _descendants(pid: int) -> list[tuple[int, int]]:
    """Every live descendant of ``pid`` (Linux: from /proc) as (pid, start time)."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    found: list[tuple[int, int]] = []
    queue = [pid]
    while queue:
        below = children.get(queue.pop(0), [])
        found.extend(below)
        queue.extend(child for child, _ in below)
    return found


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class PrefectCluster:
    """A Prefect server and workers under ``root`` (a temporary folder)."""

    root: Path
    auth_string: str
    port: int = field(default_factory=free_port)
    processes: list[Process] = field(default_factory=list)
    #: Seconds from ``prefect server start`` to a healthy API (measured by ``start``).
    startup_s: float | None = None
    #: What ``start`` adds to the server's environment.
    server_env: dict[str, str] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def env(self, name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a client process: this server, its credentials, its own home."""
        home = self.root / f"home-{name}"
        home.mkdir(exist_ok=True)
        env = base_env()
        return {
            **env,
            # `prefect` and `python` of this virtualenv first, for scripts that call them.
            "PATH": os.pathsep.join([str(Path(PREFECT).parent), env.get("PATH", "")]),
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_API_AUTH_STRING": self.auth_string,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # Prefect's client retries 503/429 five times by default; a loaded CI machine's
            # SQLite server can need more.
            "PREFECT_CLIENT_MAX_RETRIES": "10",
            **(extra or {}),
        }

    def spawn(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> Process:
        log = self.root / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                args,
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as one
            )
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def start(
        self, cwd: Path, timeout_s: float = 150.0, extra_env: dict[str, str] | None = None
    ) -> None:
        """Start the server; return once ``/api/health`` answers. ``extra_env`` adds to
        the server's environment (a PostgreSQL database URL, say); a second call starts
        the server again on the same port, with the same home and environment."""
        home = self.root / "home-server"
        home.mkdir(exist_ok=True)
        if extra_env is not None:
            self.server_env = extra_env
        env = {
            **base_env(),
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_SERVER_API_AUTH_STRING": self.auth_string,
            # Schedules are checked by reading the deployment; no run may start from one.
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING",
            # SQLite serialises writers; on a loaded machine wait longer for the lock
            # (the default, 10 s, turns a busy moment into 503s).
            "PREFECT_SERVER_DATABASE_TIMEOUT": "30",
            **self.server_env,
        }
        began = time.monotonic()
        server = self.spawn(
            "server",
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env,
            cwd,
        )
        with httpx.Client(timeout=2.0) as client:
            while True:
                if server.popen.poll() is not None:
                    raise RuntimeError(f"prefect server exited:\n{server.tail()}")
                try:
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() - began > timeout_s:
                    raise RuntimeError(
                        f"prefect server not healthy after {timeout_s} s:\n{server.tail()}"
                    )
                time.sleep(0.2)
        self.startup_s = time.monotonic() - began

    def run(
        self, name: str, args: list[str], env: dict[str, str], cwd: Path, timeout_s: float = 120
    ) -> str:
        """Run a command to completion; its output. AssertionError (with output) if it fails."""
        result = subprocess.run(
            args,
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        output = result.stdout + result.stderr
        (self.root / f"{name}.log").write_text(output)
        assert result.returncode == 0, f"{name} failed ({result.returncode}):\n{output[-4000:]}"
        return output

    def api(self) -> httpx.Client:
        """An httpx client for the REST API, authenticated as the workers are.

        Like Prefect's own client it retries 503 and 429 answers: a SQLite-backed server
        answers 503 while its database is locked by another writer (a busy machine).
        """
        user, _, password = self.auth_string.partition(":")
        return httpx.Client(
            base_url=self.api_url,
            auth=(user, password),
            timeout=30.0,
            transport=_RetryingTransport(httpx.HTTPTransport()),
        )

    def wait_for_flow_run(self, flow_run_id: str, timeout_s: float) -> dict[str, Any]:
        """Poll a flow run until its state is final; the flow run's JSON."""
        deadline = time.monotonic() + timeout_s
        with self.api() as api:
            while True:
                run: dict[str, Any] = api.get(f"/flow_runs/{flow_run_id}").raise_for_status().json()
                state = run.get("state") or {}
                if state.get("type") in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                    return run
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"flow run {flow_run_id} still {state.get('type')} after "
                        f"{timeout_s} s\n{self.report()}"
                    )
                time.sleep(1.0)

    def restart_server(self, cwd: Path, down_s: float = 2.0) -> float:
        """Stop the server (SIGTERM), wait ``down_s``, start it again on the same port with
        the same home and environment; the seconds the API was away."""
        began = time.monotonic()
        for process in self.processes:
            if process.name == "server" and process.popen.poll() is None:
                _signal_group(process.popen.pid, signal.SIGTERM)
                process.popen.wait(timeout=30)
        time.sleep(down_s)
        self.start(cwd)
        return time.monotonic() - began

    def wait_for_workers(self, pool: str, names: set[str], timeout_s: float) -> None:
        """Return once every worker in ``names`` is ONLINE in ``pool``."""
        deadline = time.monotonic() + timeout_s
        with self.api() as api:
            while True:
                workers = api.post(f"/work_pools/{pool}/workers/filter", json={}).json()
                online = {w["name"] for w in workers if w["status"] == "ONLINE"}
                if names <= online:
                    return
                assert time.monotonic() < deadline, f"workers online: {online}; wanted {names}"
                time.sleep(0.5)

    def kill_tree(self, process: Process) -> list[int]:
        """SIGKILL ``process`` and every process below it, as a machine dying would (its
        flow runs run in sessions of their own); the pids killed."""
        below = _descendants(process.popen.pid)
        _signal_group(process.popen.pid, signal.SIGKILL)
        for pid, started in below:
            stat = _stat(pid)
            if stat is not None and stat[1] == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        process.popen.wait(timeout=10)
        return [process.popen.pid, *(pid for pid, _ in below)]

    def descendants(self, process: Process) -> set[int]:
        """The pids of every live process below ``process``."""
        return {pid for pid, _ in _descendants(process.popen.pid)}

    def report(self) -> str:
        """The last lines of every process's log, for a failure message."""
        return "\n\n".join(f"== {p.name}\n{p.tail()}" for p in self.processes)

    def close(self) -> None:
        """End every process started here, and everything they started."""
        doomed: list[tuple[int, int]] = []
        for process in reversed(self.processes):  # workers first, the server last
            doomed.extend(_descendants(process.popen.pid))
            if process.popen.poll() is None:
                _signal_group(process.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10.0
        for process in self.processes:
            try:
                process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process.popen.pid, signal.SIGKILL)
                process.popen.wait(timeout=10.0)
        for pid, started in doomed:  # flow runs in sessions of their own, if any survived
            stat = _stat(pid)
            if stat is not None and stat[1] == started:  # the same process, not a reused pid
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


class _RetryingTransport(httpx.BaseTransport):
    """Retry answers that say "try again" (503, 429) with backoff, honouring Retry-After."""

    RETRY_STATUSES = frozenset({429, 503})

    def __init__(self, inner: httpx.BaseTransport, attempts: int = 8) -> None:
        self._inner = inner
        self._attempts = attempts

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()  # the body is sent again on a retry
        for attempt in range(1, self._attempts + 1):
            response = self._inner.handle_request(request)
            if response.status_code not in self.RETRY_STATUSES or attempt == self._attempts:
                return response
            response.read()
            response.close()
            try:
                delay = float(response.headers.get("Retry-After", ""))
            except ValueError:
                delay = min(0.5 * 2 ** (attempt - 1), 8.0)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._inner.close()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
