"""The ASGI app: DashScope's routes under ``/api/v1``, result URLs, and ``/_sim`` controls.

A thin layer: each route hands the raw request facts to :class:`~.core.Simulator` and turns
its :class:`~.account.Reply` into a response.

Routes::

    POST /api/v1/services/aigc/multimodal-generation/generation   sync generation and editing
    POST /api/v1/services/aigc/text2image/image-synthesis         async task (X-DashScope-Async)
    GET  /api/v1/tasks?start_time=…&model_name=…                  list tasks (batch query)
    GET  /api/v1/tasks/{task_id}                                  task status and results
    POST /api/v1/tasks/{task_id}/cancel                           cancel a PENDING task
    GET  /results/{token}.png?Expires=…                           result images (OSS-like)
    GET  /_sim/ledger   POST /_sim/reset   GET|POST /_sim/config   GET /_sim/health
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from qwbatch.core.errors import ConfigError
from qwbatch.core.model_table import ModelTable
from qwbatch.simulator.account import Reply
from qwbatch.simulator.config import SimulatorConfig
from qwbatch.simulator.core import Simulator
from qwbatch.simulator.protocol import error_body, new_request_id

API = "/api/v1"
#: Key under the ASGI scope's ``state`` where the server puts the connection's transport
#: (see :mod:`qwbatch.simulator.server`), so a fault can close it without answering.
TRANSPORT_STATE_KEY = "qwbatch.simulator.transport"


class ConnectionDropped(ConnectionError):
    """Raised to the ASGI server when a drop was asked for but no transport is reachable."""


def create_app(
    config: SimulatorConfig | None = None, *, table: ModelTable | None = None
) -> Starlette:
    """A DashScope-compatible ASGI app; ``table`` defaults to the one ``config`` names."""
    simulator = Simulator(config or SimulatorConfig(), table)
    app = Starlette(
        routes=[
            Route(
                f"{API}/services/aigc/multimodal-generation/generation",
                _generation,
                methods=["POST"],
            ),
            Route(f"{API}/services/aigc/text2image/image-synthesis", _synthesis, methods=["POST"]),
            Route(f"{API}/tasks", _list_tasks, methods=["GET"]),
            Route(f"{API}/tasks/{{task_id}}", _poll, methods=["GET"]),
            Route(f"{API}/tasks/{{task_id}}/cancel", _cancel, methods=["POST"]),
            Route("/results/{name}", _result, methods=["GET"]),
            Route("/_sim/health", _health, methods=["GET"]),
            Route("/_sim/ledger", _ledger, methods=["GET"]),
            Route("/_sim/reset", _reset, methods=["POST"]),
            Route("/_sim/config", _config, methods=["GET", "POST"]),
        ],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.simulator = simulator
    return app


def simulator_of(app: Starlette) -> Simulator:
    """The :class:`Simulator` behind an app made by :func:`create_app`."""
    return cast(Simulator, app.state.simulator)


def _sim(request: Request) -> Simulator:
    return simulator_of(cast(Starlette, request.app))


async def _generation(request: Request) -> Response:
    reply = await _sim(request).generate(
        await request.body(),
        authorization=request.headers.get("authorization"),
        base_url=str(request.base_url),
    )
    return _response(reply)


async def _synthesis(request: Request) -> Response:
    reply = await _sim(request).create_task(
        await request.body(),
        authorization=request.headers.get("authorization"),
        async_header=request.headers.get("x-dashscope-async"),
        base_url=str(request.base_url),
    )
    return _response(reply)


async def _poll(request: Request) -> Response:
    task_id = request.path_params["task_id"]
    reply = _sim(request).poll(task_id, authorization=request.headers.get("authorization"))
    return _response(reply)


async def _list_tasks(request: Request) -> Response:
    reply = _sim(request).list_tasks(
        dict(request.query_params), authorization=request.headers.get("authorization")
    )
    return _response(reply)


async def _cancel(request: Request) -> Response:
    task_id = request.path_params["task_id"]
    reply = _sim(request).cancel(task_id, authorization=request.headers.get("authorization"))
    return _response(reply)


async def _result(request: Request) -> Response:
    return _response(await _sim(request).result(request.path_params["name"]))


async def _health(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def _ledger(request: Request) -> Response:
    return JSONResponse(_sim(request).account.ledger.snapshot())


async def _reset(request: Request) -> Response:
    try:
        options = await _json_object(request)
    except ValueError as exc:
        return JSONResponse(error_body(new_request_id(), "InvalidParameter", str(exc)), 400)
    _sim(request).account.reset(restore_config=bool(options.get("restore_config", False)))
    return JSONResponse({"ok": True})


async def _config(request: Request) -> Response:
    account = _sim(request).account
    if request.method == "POST":
        try:
            account.configure(await _json_object(request))
        except (ValidationError, ConfigError, ValueError) as exc:
            return JSONResponse(error_body(new_request_id(), "InvalidParameter", str(exc)), 400)
    return JSONResponse(account.config.model_dump(mode="json"))


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = "InvalidURL" if status in (404, 405) else "InternalError"
    message = "Requested URL is invalid." if code == "InvalidURL" else str(exc)
    return JSONResponse(error_body(new_request_id(), code, message), status)


def _response(reply: Reply) -> Response:
    if reply.drop:
        return _DropConnection()
    if reply.json is not None:
        return JSONResponse(reply.json, reply.status, headers=dict(reply.headers))
    return Response(
        reply.content, reply.status, headers=dict(reply.headers), media_type=reply.media_type
    )


class _DropConnection(Response):
    """Close the client's connection without sending a byte of response."""

    def __init__(self) -> None:
        super().__init__(status_code=500)  # never sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transport = scope.get("state", {}).get(TRANSPORT_STATE_KEY)
        if transport is None:
            raise ConnectionDropped("simulated connection drop (no transport to close)")
        transport.close()
        # Let the server's connection_lost run first, so it records a client disconnect
        # rather than an app that returned without answering.
        for _ in range(2):
            await asyncio.sleep(0)
