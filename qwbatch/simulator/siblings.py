"""What the FLUX (BFL) and GPT Image (OpenAI) simulators share: knobs, ledger, controls.

Each sibling is a small Starlette app (:mod:`.bfl_app`, :mod:`.openai_app`) run like the
DashScope one (``running(app=…)``). Both keep a billing ledger (what the provider would
charge, in USD), and take fault knobs over ``POST /_sim/config``:

- ``fail_next``: HTTP answers to give the next calls instead of serving them, as
  ``[[status, code], …]`` (``[429, "rate_limit_exceeded"]``, ``[402, ""]`` …);
- ``lose_answers``: the next billable calls are served and billed, then answered only after
  ``answer_delay_s`` seconds (longer than a test client's read timeout: a lost answer).

``GET /_sim/ledger``, ``POST /_sim/reset`` and ``GET /_sim/health`` as in the DashScope one.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from qwbatch.core.model_table import ModelTable
from qwbatch.simulator.render import Recipe, render


@dataclass
class Knobs:
    """Fault knobs a test sets over HTTP (see the module doc)."""

    fail_next: list[list[Any]] = field(default_factory=list)
    lose_answers: int = 0
    answer_delay_s: float = 2.0


@dataclass
class Billed:
    """One billed call: what it was and what it cost (USD)."""

    model: str
    prompt: str
    images: int
    cost_usd: float
    at: float = field(default_factory=time.time)


class SiblingState:
    """The ledger and knobs of one sibling simulator (thread-safe enough for one loop)."""

    def __init__(
        self,
        *,
        api_key: str | None,
        table: ModelTable | None = None,
        on_reset: Callable[[], None] | None = None,
    ) -> None:
        self.api_key = api_key
        self.on_reset = on_reset
        self.table = table or ModelTable.load()
        self.lock = threading.Lock()
        self.knobs = Knobs()
        self.ledger: list[Billed] = []
        self.calls = 0
        self.answers_lost = 0

    def reset(self) -> None:
        with self.lock:
            self.knobs = Knobs()
            self.ledger.clear()
            self.calls = 0
            self.answers_lost = 0
        if self.on_reset is not None:
            self.on_reset()

    def bill(self, model: str, prompt: str, images: int, cost_usd: float) -> None:
        with self.lock:
            self.ledger.append(Billed(model, prompt, images, cost_usd))

    def injected(self) -> tuple[int, str] | None:
        """The next injected failure (status, code), if a test asked for one."""
        with self.lock:
            self.calls += 1
            if self.knobs.fail_next:
                status, code = self.knobs.fail_next.pop(0)
                return int(status), str(code)
            return None

    def take_lost_answer(self) -> float | None:
        """Seconds to hold this billable answer back, when a lost answer is due."""
        with self.lock:
            if self.knobs.lose_answers > 0:
                self.knobs.lose_answers -= 1
                self.answers_lost += 1
                return self.knobs.answer_delay_s
            return None

    def ledger_body(self) -> dict[str, Any]:
        with self.lock:
            return {
                "billed_usd": round(sum(entry.cost_usd for entry in self.ledger), 6),
                "billed_images": sum(entry.images for entry in self.ledger),
                "entries": [asdict(entry) for entry in self.ledger],
                "calls": self.calls,
                "answers_lost": self.answers_lost,
            }


def control_routes(state: SiblingState) -> list[Route]:
    """``/_sim/health``, ``/_sim/ledger``, ``/_sim/reset`` and ``/_sim/config``."""

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def ledger(request: Request) -> Response:
        return JSONResponse(state.ledger_body())

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"ok": True})

    async def config(request: Request) -> Response:
        if request.method == "POST":
            body = await request.json()
            with state.lock:
                for name, value in body.items():
                    if not hasattr(state.knobs, name):
                        return JSONResponse({"message": f"unknown knob {name}"}, status_code=400)
                    setattr(state.knobs, name, value)
        return JSONResponse(asdict(state.knobs))

    return [
        Route("/_sim/health", health),
        Route("/_sim/ledger", ledger),
        Route("/_sim/reset", reset, methods=["POST"]),
        Route("/_sim/config", config, methods=["GET", "POST"]),
    ]


async def held_back(state: SiblingState) -> None:
    """Sleep when this billable answer is to be lost (the client gives up first)."""
    delay = state.take_lost_answer()
    if delay:
        await asyncio.sleep(delay)


async def render_png(
    model: str, prompt: str, seed: int, index: int, width: int, height: int
) -> bytes:
    """A deterministic placeholder image, captioned (the DashScope simulator's renderer)."""
    recipe = Recipe(
        model=model,
        prompt=prompt,
        seed=seed,
        index=index,
        count=1,
        width=width,
        height=height,
    )
    return await asyncio.to_thread(render, recipe)


def configure(root_url: str, **knobs: Any) -> dict[str, Any]:
    """Set knobs on a running sibling simulator; the knobs it then has."""
    response = httpx.post(f"{root_url}/_sim/config", json=knobs, timeout=10.0)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


Handler = Callable[[Request], Awaitable[Response]]
