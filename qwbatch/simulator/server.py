"""Running the simulator: :func:`serve` (blocking) and :func:`running` (a background thread).

Example::

    with running(SimulatorConfig(api_key="sk-test", rps=1000)) as sim:
        httpx.post(f"{sim.base_url}/services/aigc/multimodal-generation/generation", ...)
        assert sim.ledger()["billed_images"] == 1
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol

from qwbatch.core.model_table import ModelTable
from qwbatch.simulator.app import TRANSPORT_STATE_KEY, create_app
from qwbatch.simulator.config import SimulatorConfig

DEFAULT_PORT = 8765
#: Seconds to wait for the server to start answering, and for it to stop.
STARTUP_TIMEOUT_S = 10.0
SHUTDOWN_TIMEOUT_S = 10.0


class _H11WithTransport(H11Protocol):
    """uvicorn's h11 protocol, exposing each connection's transport to the app (and no Nagle).

    The ``drop_connection_rate`` fault must close the socket without any response — what a
    client sees when a server dies mid-request — and ASGI has no message for that.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # app_state is copied into every request's scope["state"]; this copy is per connection.
        self.app_state = {**self.app_state, TRANSPORT_STATE_KEY: transport}
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Headers and body go out as two writes; Nagle would hold the second for 40 ms.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


def _uvicorn_config(app: Starlette, host: str, port: int, *, quiet_logging: bool) -> uvicorn.Config:
    extra: dict[str, Any] = {"log_config": None} if quiet_logging else {}
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=_H11WithTransport,
        loop="asyncio",
        ws="none",  # no websockets: nothing to serve, and no deprecation warnings from them
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
        **extra,
    )


def serve(
    config: SimulatorConfig | None = None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    table: ModelTable | None = None,
) -> None:
    """Serve the simulator until interrupted (Ctrl-C); the API is at ``http://host:port/api/v1``."""
    app = create_app(config, table=table)
    uvicorn.Server(_uvicorn_config(app, host, port, quiet_logging=False)).run()


class SimulatorHandle:
    """A running simulator, seen over HTTP: its URLs, ledger and knobs."""

    def __init__(self, root_url: str, *, api_key: str | None = None) -> None:
        #: ``http://127.0.0.1:PORT`` (result URLs and ``/_sim`` live here).
        self.root_url = root_url.rstrip("/")
        #: ``http://127.0.0.1:PORT/api/v1``, the DashScope base URL.
        self.base_url = f"{self.root_url}/api/v1"
        #: The key the server started with (None: any key is accepted).
        self.api_key = api_key
        self._client = httpx.Client(base_url=self.root_url, timeout=STARTUP_TIMEOUT_S)

    def auth_headers(self) -> dict[str, str]:
        """``Authorization`` for the server's starting key (any key if it has none)."""
        return {"Authorization": f"Bearer {self.api_key or 'sk-simulator'}"}

    def ledger(self) -> dict[str, Any]:
        """``GET /_sim/ledger``: billed entries, totals and counters."""
        return self._json(self._client.get("/_sim/ledger"))

    def reset(self, *, restore_config: bool = False) -> None:
        """Clear the ledger, counters, results and tasks (and knob changes if asked)."""
        self._json(self._client.post("/_sim/reset", json={"restore_config": restore_config}))

    def configure(self, **knobs: Any) -> SimulatorConfig:
        """Change knobs on the running server; the whole new config.

        ValueError (with the server's reason) for an unknown knob or a value out of range.
        """
        response = self._client.post("/_sim/config", json=knobs)
        if response.status_code == 400:
            raise ValueError(f"simulator refused {sorted(knobs)}: {response.json()['message']}")
        return SimulatorConfig.model_validate(self._json(response))

    def config(self) -> SimulatorConfig:
        return SimulatorConfig.model_validate(self._json(self._client.get("/_sim/config")))

    def close(self) -> None:
        self._client.close()

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._client.get("/_sim/health").raise_for_status()
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


@contextmanager
def running(
    config: SimulatorConfig | None = None,
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    table: ModelTable | None = None,
    app: Starlette | None = None,
) -> Iterator[SimulatorHandle]:
    """Run the simulator in a background thread on ``host:port`` (0: a free port) until exit.

    ``app`` runs another ASGI app the same way (the FLUX and GPT Image siblings)."""
    config = config or SimulatorConfig()
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP;
    # without it every response pays a 40 ms Nagle + delayed-ACK stall.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(
        _uvicorn_config(
            app or create_app(config, table=table), host, bound_port, quiet_logging=True
        )
    )
    thread = threading.Thread(
        target=server.run,
        kwargs={"sockets": [sock]},
        name=f"qwbatch-simulator-{bound_port}",
        daemon=True,
    )
    thread.start()
    handle = SimulatorHandle(f"http://{host}:{bound_port}", api_key=config.api_key)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the simulator did not start on {host}:{bound_port}")
            time.sleep(0.01)
        handle.wait_ready()
        yield handle
    finally:
        handle.close()
        server.should_exit = True
        thread.join(SHUTDOWN_TIMEOUT_S)
        if thread.is_alive():
            server.force_exit = True
            thread.join(SHUTDOWN_TIMEOUT_S)
        sock.close()
