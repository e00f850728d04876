"""Which limits apply to a model, and the one limiter per (account, model) in this process.

Precedence, most specific first: ``Settings.model_limits[model]`` (per-model settings), then
the run-wide ``Settings.rps`` / ``max_in_flight`` (``qwbatch run --rps``), then the model
table's row (``qwbatch/data/models.toml``). ``rps`` "auto" at any of these levels means: find
the account's limit, starting from the model table's figure.
"""

from __future__ import annotations

import logging
import threading
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Literal, Protocol

from qwbatch.core.model_table import ModelSpec, ModelTable
from qwbatch.core.settings import Settings
from qwbatch.limits.learning import Learned
from qwbatch.limits.local import LimitSpec, ModelLimiter
from qwbatch.limits.prefect_limit import default_scope, prefect_api_url
from qwbatch.limits.shared import PrefectBudget

log = logging.getLogger("qwbatch.limits")


class Limiter(Protocol):
    """What the engine asks of a limiter: a slot around each send, and feedback."""

    def slot(self) -> AbstractAsyncContextManager[None]: ...

    def on_success(self) -> None: ...

    def on_throttle(self, retry_after: float | None = None) -> None: ...


def limit_spec(model: ModelSpec, settings: Settings) -> LimitSpec:
    """The limits for ``model`` under ``settings`` (see the module docstring for precedence)."""
    own = settings.model_limits.get(model.name)
    rps = (own.rps if own else None) or settings.rps or ("auto" if model.auto_rps else model.rps)
    in_flight = (own.max_in_flight if own else None) or settings.max_in_flight
    return LimitSpec(
        rps=model.rps if rps == "auto" else rps,
        max_in_flight=in_flight or model.max_in_flight,
        auto=rps == "auto",
    )


Source = Literal["model setting", "run setting", "model table"]


@dataclass(frozen=True, slots=True)
class LimitRow:
    """One model's limits and where each comes from (for ``qwbatch limits``)."""

    model: str
    rps: float
    rps_from: Source
    #: ``rps`` is where the search for the account's limit starts ("auto").
    auto: bool
    max_in_flight: int
    max_in_flight_from: Source


def limit_rows(table: ModelTable, settings: Settings) -> list[LimitRow]:
    """Every model's limits under ``settings``, with the setting or table row that set them."""
    rows = []
    for name in table.names():
        model = table.get(name)
        spec = limit_spec(model, settings)
        own = settings.model_limits.get(name)
        rows.append(
            LimitRow(
                model=name,
                rps=spec.rps,
                rps_from=_source(own.rps if own else None, settings.rps),
                auto=spec.auto,
                max_in_flight=spec.max_in_flight,
                max_in_flight_from=_source(
                    own.max_in_flight if own else None, settings.max_in_flight
                ),
            )
        )
    return rows


def _source(own: object, run: object) -> Source:
    if own is not None:
        return "model setting"
    return "run setting" if run is not None else "model table"


def limit_scope(settings: Settings) -> str:
    """The account the limits belong to: ``Settings.limit_scope`` or the provider host."""
    return settings.limit_scope or default_scope(settings.base_url())


def local_reason(settings: Settings) -> str | None:
    """Why limits cannot be shared under ``settings``; None when they can be tried."""
    if settings.shared_limits == "off":
        return "shared_limits is off"
    if prefect_api_url() is None:
        return (
            "no Prefect server configured (PREFECT_API_URL is unset, and an ephemeral "
            "server serves one process only)"
        )
    return None


class LimiterRegistry:
    """One limiter per (account scope, model) in this process, created on first use.

    Every shard of every run in the process shares it, so together they stay under the
    account's limits; with a Prefect server the limiter also shares them with other workers.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limiters: dict[tuple[str, str], ModelLimiter] = {}
        self._seeds: dict[tuple[str, str], Learned] = {}

    def for_model(self, model: ModelSpec, settings: Settings) -> ModelLimiter:
        """The limiter for ``model``, rebuilt when its limits or sharing changed."""
        spec = limit_spec(model, settings)
        scope = limit_scope(settings)
        reason = local_reason(settings)
        # Models of one limit group (BFL's active tasks per account) share one limiter.
        name = model.limit_group or model.name
        with self._lock:
            limiter = self._limiters.get((scope, name))
            if limiter is not None and limiter.spec == spec and _sharing(limiter) == (not reason):
                return limiter
            if limiter is not None:
                limiter.close()
            shared = None
            if reason is None:
                shared = PrefectBudget(scope=scope, model=name, spec=spec)
            else:
                log.info("limits for %s@%s are local to this process: %s", name, scope, reason)
            limiter = ModelLimiter(
                spec,
                name=name,
                shared=shared,
                local_reason=reason,
                learned=self._seeds.get((scope, name)),
            )
            self._limiters[(scope, name)] = limiter
            return limiter

    def seed(self, scope: str, model: str, learned: Learned) -> None:
        """What an earlier run learned about ``model`` on account ``scope``: a limiter made
        after this starts near it (one that exists already knows better)."""
        with self._lock:
            self._seeds[(scope, model)] = learned

    def learned(self, scope: str) -> dict[str, Learned]:
        """What the limiters of account ``scope`` learned, by model: those that learned a
        limit, and ``auto`` ones (their rate is worth starting from)."""
        with self._lock:
            limiters = [(m, lim) for (s, m), lim in self._limiters.items() if s == scope]
        out = {}
        for model, limiter in limiters:
            now = limiter.learned()
            if now.learned is not None or limiter.spec.auto:
                out[model] = now
        return out

    def limiters(self) -> list[ModelLimiter]:
        with self._lock:
            return list(self._limiters.values())

    def clear(self) -> None:
        """Close and forget every limiter (tests; a long-lived process changing accounts)."""
        with self._lock:
            limiters = list(self._limiters.values())
            self._limiters.clear()
            self._seeds.clear()
        for limiter in limiters:
            limiter.close()


def _sharing(limiter: ModelLimiter) -> bool:
    return limiter.shared is not None


#: The process-wide registry: every shard of every run in this process shares it.
LIMITERS = LimiterRegistry()
