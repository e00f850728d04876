"""One simulated DashScope account: its state, and the checks every call passes.

The state: the knobs (:class:`~qwbatch.simulator.config.SimulatorConfig`), the model table,
the billing ledger, the seeded fault dice, the rate and in-flight limiters, the stored
results and the async tasks (:mod:`qwbatch.simulator.state`). The checks, in the order a call
meets them: the key, the account's standing, the body, moderation, the rate and in-flight
limits; then the faults the dice choose (5xx, an error in a 200). What each endpoint does
with an admitted call is :mod:`qwbatch.simulator.core`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from qwbatch.core.model_table import ModelSpec, ModelTable
from qwbatch.simulator import render
from qwbatch.simulator.config import SimulatorConfig
from qwbatch.simulator.limits import InFlight, RateLimiter
from qwbatch.simulator.protocol import ApiError, Job, error_body
from qwbatch.simulator.state import Dice, Ledger, ResultStore, TaskStore

INTERNAL_ERROR = "An internal error has occured, please try again later or contact service support."
_GATEWAY_503 = (
    "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    "<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n"
    "<hr><center>Tengine</center>\r\n</body>\r\n</html>\r\n"
)


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer: JSON, raw content, or (``drop``) no answer at all."""

    status: int = 200
    json: Any = None
    content: bytes = b""
    media_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Close the connection without a response (the ambiguous, billed case).
    drop: bool = False


class Account:
    """The state of one simulated account, and the checks its calls pass (see the module)."""

    def __init__(self, config: SimulatorConfig, table: ModelTable | None = None) -> None:
        self.initial_config = config
        self.config = config
        self.table = table if table is not None else _load_table(config)
        self._fixed_table = table is not None
        self.ledger = Ledger()
        self.dice = Dice(config.seed)
        self.limiter = RateLimiter()
        self.in_flight = InFlight()
        self.results = ResultStore()
        self.tasks = TaskStore()
        self._responses = 0

    # ------------------------------------------------------------------ control (/_sim)

    def configure(self, patch: Mapping[str, Any]) -> SimulatorConfig:
        """Apply a partial update of knobs (pydantic ValidationError / ConfigError if bad)."""
        return self._set_config(self.config.updated(dict(patch)))

    def reset(self, *, restore_config: bool = False) -> None:
        """Forget the ledger, counters, results and tasks; optionally the knob changes too."""
        self.tasks.clear()
        self.results.clear()
        self.limiter.clear()
        self.ledger = Ledger()
        self._responses = 0
        if restore_config:
            self._set_config(self.initial_config)
        self.dice = Dice(self.config.seed)

    def _set_config(self, config: SimulatorConfig) -> SimulatorConfig:
        models_changed = (config.models_file, config.declared_models) != (
            self.config.models_file,
            self.config.declared_models,
        )
        if models_changed and not self._fixed_table:
            self.table = _load_table(config)
        self.config = config
        self.dice.seed = config.seed
        return config

    def store_result(
        self,
        config: SimulatorConfig,
        job: Job,
        index: int,
        width: int,
        height: int,
        base_image: bytes | None,
        key: str,
        base_url: str,
        extra_images: tuple[bytes, ...] = (),
    ) -> str:
        recipe = render.Recipe(
            model=job.model,
            prompt=job.prompt,
            seed=job.seed,
            index=index,
            count=job.n,
            width=width,
            height=height,
            watermark=job.watermark,
            # Fast mode never draws the input: do not hold its bytes for the URL lifetime.
            base_image=None if config.fast else base_image,
            extra_images=() if config.fast else extra_images,
            is_edit=bool(job.image_refs),
            fast=config.fast,
            font_path=config.font_path,
            misspell=self.dice.hit(config.misspell_rate, f"misspell{index}", key),
        )
        corrupt = self.dice.hit(config.corrupt_image_rate, f"corrupt{index}", key)
        expired = self.dice.hit(config.expired_url_rate, f"expired{index}", key)
        ttl_s = 0.0 if expired else config.url_ttl_s
        token, expires_at = self.results.add(recipe, ttl_s=ttl_s, corrupt=corrupt)
        signature = token[:16]
        return (
            f"{base_url.rstrip('/')}/results/{token}.png?Expires={int(expires_at)}"
            f"&OSSAccessKeyId=LTAI5tSimulator&Signature={signature}"
        )

    def surviving_items(self, config: SimulatorConfig, job: Job, key: str) -> list[int]:
        if job.n == 1:
            return [0]
        rate = config.partial_failure_rate
        return [i for i in range(job.n) if not self.dice.hit(rate, f"item{i}", key)]

    def authorize(self, config: SimulatorConfig, authorization: str | None) -> None:
        scheme, _, key = (authorization or "").strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise ApiError(401, "InvalidApiKey", "No API-key provided.")
        if config.api_key is not None and key != config.api_key:
            raise ApiError(401, "InvalidApiKey", "Invalid API-key provided.")

    @staticmethod
    def in_good_standing(config: SimulatorConfig) -> None:
        if config.arrears:
            raise ApiError(
                400,
                "Arrearage",
                "Access denied, please make sure your account is in good standing.",
            )

    def throttle(self, config: SimulatorConfig, spec: ModelSpec, key: str) -> None:
        now = time.time()
        self.ledger.offered_at.append(now)
        if self.dice.hit(config.throttle_rate, "throttle", key):
            # The burst protection, drawn from the dice rather than the clock.
            raise self.throttled(
                config,
                "Throttling",
                "Request rate increased too quickly, please try again later.",
            )
        if config.rate_limit and not self.limiter.allow(
            spec.name, config.model_rps(spec.name, spec.rps), config.burst
        ):
            raise self.throttled(
                config,
                "Throttling.RateQuota",
                "Requests rate limit exceeded, please try again later.",
            )
        self.ledger.admitted_at.append(now)

    def throttled(self, config: SimulatorConfig, code: str, message: str) -> ApiError:
        self.ledger.throttled += 1
        headers = {}
        if config.retry_after_s is not None:
            headers["Retry-After"] = f"{config.retry_after_s:g}"
        return ApiError(429, code, message, headers=headers)

    def fault(
        self, config: SimulatorConfig, key: str, request_id: str, *, in_200: bool = True
    ) -> Reply | None:
        """A server-side failure the dice chose for this request (nothing billed), or None."""
        if self.dice.hit(config.error_5xx_rate, "5xx", key):
            if self.dice.roll("5xx-kind", key) < 0.5:
                return self.error_reply(request_id, ApiError(500, "InternalError", INTERNAL_ERROR))
            # A gateway in front of the service answers with HTML, not the JSON error body.
            self.ledger.errors["503"] += 1
            return Reply(status=503, content=_GATEWAY_503.encode(), media_type="text/html")
        if in_200 and self.dice.hit(config.error_in_200_rate, "error_in_200", key):
            # "DashScope can return API-level errors in a 200 response body" (no output).
            self.ledger.errors["InternalError"] += 1
            return Reply(json=error_body(request_id, "InternalError", INTERNAL_ERROR))
        return None

    def latency(self, config: SimulatorConfig, key: str) -> float:
        return config.latency_s + config.latency_jitter_s * self.dice.roll("latency", key)

    def usage_style(self, config: SimulatorConfig) -> Literal["docs", "output"]:
        self._responses += 1
        if config.usage_style == "alternate":
            return "docs" if self._responses % 2 else "output"
        return config.usage_style

    def error_reply(self, request_id: str, error: ApiError) -> Reply:
        self.ledger.errors[error.code] += 1
        return Reply(
            status=error.status,
            json=error_body(request_id, error.code, error.message),
            headers=error.headers,
        )


def _load_table(config: SimulatorConfig) -> ModelTable:
    return ModelTable.load(config.models_file, config.declared_models)


def read_body(config: SimulatorConfig, raw: bytes) -> Any:
    if len(raw) > config.max_body_bytes:
        raise ApiError(
            413, "BadRequest.TooLarge", f"The request body exceeds {config.max_body_bytes} bytes."
        )
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "InvalidParameter", "The request body is not valid JSON.") from None


def moderate(config: SimulatorConfig, job: Job) -> None:
    word = config.moderation_word
    if word and (word in job.prompt or word in (job.negative_prompt or "")):
        raise ApiError(400, "DataInspectionFailed", "Input data may contain inappropriate content.")


def in_flight_limit(config: SimulatorConfig, spec: ModelSpec) -> int | None:
    if config.max_in_flight == "table":
        return spec.max_in_flight
    return config.max_in_flight
