"""The simulator's knobs: one frozen pydantic model, changeable at runtime as a whole.

Units are in the names: ``_s`` seconds, ``_bytes`` bytes, ``rps`` requests per second;
``*_rate`` fields are probabilities in [0, 1] drawn from a seeded, per-request dice (see
:class:`qwbatch.simulator.state.Dice`), so a run is reproducible for a given ``seed``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

UsageStyle = Literal["docs", "output", "alternate"]

#: A probability in [0, 1].
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class SimulatorConfig(BaseModel):
    """Every knob of the DashScope simulator, with defaults that behave like the docs.

    Example::

        SimulatorConfig(api_key="sk-test", rps=1000, fast=True, error_5xx_rate=0.1)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Access
    #: The only accepted ``Authorization: Bearer`` key; None accepts any non-empty key.
    api_key: str | None = None

    # Model table (qwbatch.core.model_table.ModelTable.load arguments)
    models_file: Path | None = None
    declared_models: tuple[str, ...] = ()

    # Rendering
    #: Benchmark mode: text-free flat images whose PNG bytes are cached per size and colour.
    fast: bool = False
    #: A TrueType/OpenType font for the prompt text; None: the bundled Noto Sans CJK.
    font_path: str | None = None
    #: Spelling of ``usage``: "docs" (width/height/image_count), "output"
    #: (output_width/output_height/output_image_count) or "alternate" (switch per request).
    usage_style: UsageStyle = "docs"

    # Content moderation
    #: A prompt containing this word is refused with 400 DataInspectionFailed.
    moderation_word: str = "__moderate__"

    # Rate limits
    #: Per-model token buckets at the model table's ``rps``; False disables 429s entirely.
    rate_limit: bool = True
    #: Overrides every model's ``rps`` (requests per second).
    rps: float | None = Field(default=None, gt=0)
    #: Per-model ``rps`` overrides; they win over ``rps``.
    rps_by_model: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    #: Bucket capacity in requests; None means max(1, rps) (one second of traffic).
    burst: float | None = Field(default=None, ge=1)
    #: Cap on concurrent sync requests per model: an int for every model, "table" for the
    #: table's ``max_in_flight``, None for no cap. Over the cap → 429 Throttling.
    max_in_flight: int | Literal["table"] | None = None
    #: ``GET /tasks/{id}`` rate limit for the whole account (the docs say 20); None: no limit.
    task_query_rps: float | None = Field(default=None, gt=0)
    #: A 429 ("Request rate increased too quickly") drawn from the seeded dice, whatever the
    #: timing: 429s that come on any machine, however fast. A retry rolls again.
    throttle_rate: Probability = 0.0
    #: When set, 429 responses carry ``Retry-After`` with this many seconds.
    retry_after_s: float | None = Field(default=None, ge=0)

    # Timing
    #: Added before answering a sync call, and as an async task's RUNNING time (seconds).
    latency_s: float = Field(default=0.0, ge=0)
    #: Extra uniform random latency in [0, latency_jitter_s) seconds, from the seeded dice.
    latency_jitter_s: float = Field(default=0.0, ge=0)
    #: Seconds an async task stays PENDING before it turns RUNNING.
    queue_s: float = Field(default=0.0, ge=0)
    #: Lifetime of result URLs (seconds; the real service: 24 h).
    url_ttl_s: float = Field(default=86_400.0, gt=0)
    #: Lifetime of task ids (seconds; the real service: 24 h); afterwards UNKNOWN.
    task_ttl_s: float = Field(default=86_400.0, gt=0)

    # Limits on inputs
    max_input_image_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    #: Refuse edit inputs with a side outside [384, 3072] pixels with 400 InvalidParameter
    #: (docs/providers/dashscope.md §3.5: some sources call this range a hard limit, some advice).
    strict_input_sides: bool = False
    max_body_bytes: int = Field(default=64 * 1024 * 1024, gt=0)

    #: The account is in arrears: every paid call (sync or a task's submission) answers
    #: 400 Arrearage, as DashScope does for an account with an unpaid bill; nothing billed.
    arrears: bool = False

    # Faults (probabilities; reproducible for a given seed)
    seed: int = 0
    #: 500 InternalError (JSON) or 503 (gateway HTML); nothing billed.
    error_5xx_rate: Probability = 0.0
    #: The image is generated and billed, then the connection closes without a response.
    drop_connection_rate: Probability = 0.0
    #: The result URL serves truncated PNG bytes.
    corrupt_image_rate: Probability = 0.0
    #: HTTP 200 whose body is ``{"code": "InternalError", ...}`` with no output; not billed.
    error_in_200_rate: Probability = 0.0
    #: Per item of an n>1 request: that item fails; only the successes are billed.
    partial_failure_rate: Probability = 0.0
    #: An async task ends FAILED (InternalError.Algo); nothing billed.
    task_failure_rate: Probability = 0.0
    #: Per result image: its URL is born expired (403 "Request has expired"); still billed.
    expired_url_rate: Probability = 0.0
    #: Per result image whose prompt quotes text: one character of the drawn text is
    #: replaced (qwbatch.simulator.lettering); the image is billed as usual.
    misspell_rate: Probability = 0.0

    def updated(self, patch: dict[str, Any]) -> SimulatorConfig:
        """A copy with ``patch`` applied, validated like a fresh config (ValidationError if not)."""
        return SimulatorConfig.model_validate({**self.model_dump(), **patch})

    def model_rps(self, model: str, table_rps: float) -> float:
        """The rate (requests per second) the bucket of ``model`` refills at."""
        if model in self.rps_by_model:
            return self.rps_by_model[model]
        return self.rps if self.rps is not None else table_rps
