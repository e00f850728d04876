"""Settings, loaded once at the edge (CLI or flow) and passed down.

Every field reads from an environment variable ``QWBATCH_<FIELD>``; the provider key is the
provider's own ``DASHSCOPE_API_KEY``. S3 credentials come from the standard AWS chain and are
never held here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Region name → DashScope base URL (docs/providers/dashscope.md §2.1).
REGION_BASE_URLS: dict[str, str] = {
    "singapore": "https://dashscope-intl.aliyuncs.com/api/v1",
    "beijing": "https://dashscope.aliyuncs.com/api/v1",
    "virginia": "https://dashscope-us.aliyuncs.com/api/v1",
}

#: Region name → the currency its prices are quoted in.
REGION_CURRENCY: dict[str, str] = {"singapore": "USD", "beijing": "CNY", "virginia": "USD"}


#: Requests per second: a figure, or "auto" — find the account's limit, starting from the
#: model table's figure (``qwbatch.limits.learning``).
Rps = Annotated[float, Field(gt=0)] | Literal["auto"]


class ModelLimits(BaseModel):
    """One model's limits set in settings; a field left out keeps the model table's value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Requests per second for the whole account, or "auto".
    rps: Rps | None = None
    #: Requests in flight for the whole account.
    max_in_flight: int | None = Field(default=None, gt=0)


class Settings(BaseSettings):
    """qwbatch configuration. Units are in the field names (``_s`` seconds, ``_bytes`` bytes)."""

    model_config = SettingsConfigDict(
        env_prefix="QWBATCH_", extra="ignore", frozen=True, populate_by_name=True
    )

    # Provider
    region: str = "singapore"
    dashscope_base_url: str | None = None
    dashscope_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("DASHSCOPE_API_KEY", "dashscope_api_key"),
        repr=False,
    )
    #: Optional workspace id, sent as ``X-DashScope-WorkSpace``.
    dashscope_workspace_id: str | None = None
    default_model: str = "qwen-image-2.0"
    #: Channel size for rows without a ``target_size`` (``"300*250"``, ``"728*90:pad"``).
    default_target_size: str | None = None
    #: A TOML file whose ``[models."name"]`` tables extend or replace the bundled model table.
    models_file: Path | None = None
    #: Models the user vouches for although no table knows them (rules: permissive).
    declared_models: list[str] = Field(default_factory=list)
    #: Use the async task endpoint for models that offer it (exact resume by task id).
    prefer_async: bool = True
    #: Render every manifest row on each of these models (``--models``); a row's own
    #: ``models`` cell wins. Each becomes its own request, with id ``ID@MODEL``.
    models: list[str] = Field(default_factory=list)

    # Other providers (docs/providers/): keys from the environment only, never logged.
    bfl_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("BFL_API_KEY", "bfl_api_key"), repr=False
    )
    #: BFL's API host, without ``/v1`` (also api.eu.bfl.ai, api.us.bfl.ai).
    bfl_base_url: str = "https://api.bfl.ai"
    openai_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key"),
        repr=False,
    )
    #: The Images API base, with ``/v1``.
    openai_base_url: str = "https://api.openai.com/v1"
    #: "openai" (size WxH, usage tokens) or "together" (width/height, response_format
    #: base64, no usage: priced per image) for gateways that copy the path in another shape.
    openai_dialect: Literal["openai", "together"] = "openai"

    # HTTP timeouts (seconds). A long read timeout beats aggressive retries: a sync image call
    # that times out on our side may still be billed on the provider's
    # (docs/providers/dashscope.md §5).
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 300.0
    download_timeout_s: float = 120.0
    #: What sends the provider's HTTP under httpx: "aiohttp" (half the CPU per request; see
    #: ``qwbatch.providers.aiohttp_transport``) or httpx's own "httpcore".
    http_transport: Literal["aiohttp", "httpcore"] = "aiohttp"
    poll_interval_s: float = 2.0
    poll_max_interval_s: float = 10.0
    task_deadline_s: float = 900.0

    # Retries inside a shard (one retry layer: Prefect does not retry shards on top of this).
    max_attempts: int = 5
    backoff_base_s: float = 2.0
    backoff_max_s: float = 60.0
    ambiguous_retries: int = 1
    #: Seconds from a request's first send after which it is not retried again.
    max_request_s: float = Field(default=900.0, gt=0)
    #: Seconds to keep retrying a store (and the journal) that is unreachable before giving
    #: up; images already generated wait in memory meanwhile, and nothing new is sent.
    store_retry_s: float = 3600.0
    #: Look for the async task behind a submission whose answer was lost (task listing).
    recover_tasks: bool = True

    # Text checks (qwbatch.text, qwbatch.render.rerolls): rows with expected_text
    #: Extra renders of an image whose text reads wrong (0: read and report only).
    text_rerolls: int = Field(default=2, ge=0)
    #: Highest character error rate an expected string may read with and pass (0: exact).
    text_max_cer: float = Field(default=0.0, ge=0.0, le=1.0)
    #: OCR worker processes per run process; None: one per core, at most two.
    text_workers: int | None = Field(default=None, ge=1)

    # Throughput
    shard_size: int = 250
    max_parallel_shards: int = 4
    #: Overrides of the model table's per-model limits for this run; ``rps`` may be "auto".
    rps: Rps | None = None
    max_in_flight: int | None = None
    #: Per-model limits, e.g. ``{"qwen-image-2.0-pro": {"rps": 0.5}}``; they win over ``rps``
    #: and ``max_in_flight`` above (the more specific setting wins).
    model_limits: dict[str, ModelLimits] = Field(default_factory=dict)
    #: "auto": share limits across workers through Prefect global concurrency limits when a
    #: Prefect server is configured (PREFECT_API_URL); "off": limit each process on its own.
    shared_limits: Literal["auto", "off"] = "auto"
    #: Names the account in shared limit names; default: the provider host (and port).
    limit_scope: str | None = None
    #: Seconds between limit status lines (rate, limit, in flight, 429s) while a run goes.
    limits_status_s: float = Field(default=15.0, gt=0)
    #: Seconds a run's lease on DEST lasts unless renewed (every third of it): how long a
    #: run that died without a trace keeps DEST from others (``storage.lease``).
    lease_ttl_s: float = Field(default=60.0, gt=0)

    # Prices and budgets (qwbatch.core.costs, qwbatch.budget)
    #: A TOML file of negotiated prices: ``[singapore] "qwen-image-2.0" = 0.03``.
    prices_file: Path | None = None
    #: Negotiated prices for this run's region, per model (currency units per image).
    prices: dict[str, float] = Field(default_factory=dict)
    #: Where a run's budget is counted: "local" (this process: every shard of a flow run
    #: that executes here), "prefect" (a global concurrency limit on the Prefect server,
    #: shared by every worker), or "auto" ("prefect" when PREFECT_API_URL names a server).
    budget_backend: Literal["auto", "local", "prefect"] = "auto"

    # Object storage (S3-compatible); credentials from the standard AWS chain.
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_addressing_style: Literal["auto", "virtual", "path"] = "auto"

    # Edit inputs (inputs.fetch, inputs.staging). s3:// inputs use the store's settings.
    #: Folders besides the manifest's that input paths may name; a relative path is looked
    #: up in the manifest's folder first, then in these, in order.
    input_roots: list[Path] = Field(default_factory=list)
    #: Hosts exempt from the public-address rule for http(s) inputs (an internal asset
    #: server; the loopback server of a test), and the only hosts plain http:// may name.
    #: Empty (the default): public https:// only.
    input_allow_hosts: list[str] = Field(default_factory=list)
    #: Largest original input fetched (bytes; normalisation then brings it to 10 MB or less).
    input_max_download_bytes: int = 50_000_000
    #: Time allowed to fetch one http(s) input, redirects included (seconds).
    input_fetch_timeout_s: float = 30.0
    #: Inputs fetched and checked at once while planning.
    input_fetch_concurrency: int = 8
    #: Pixels of edit inputs decoded at once, over every thread (width × height, summed):
    #: converting an image takes about 4–12 bytes a pixel, so the default bounds that memory
    #: near 1 GB however many large inputs arrive together. An input larger than this
    #: is decoded alone.
    input_decode_pixels: int = Field(default=100_000_000, gt=0)
    #: Manifests of at least this many rows are planned in two processes (0: always one, the
    #: default: on the 1,000,000-row plan bench the second process cost ~1.3 s more CPU and
    #: ~400 MiB more memory, the two together over 1 GiB, and gained wall time only on a
    #: machine with a core to spare).
    plan_split_rows: int = 0

    def base_url(self) -> str:
        """The DashScope base URL: an explicit one wins, else the region's."""
        if self.dashscope_base_url:
            return self.dashscope_base_url.rstrip("/")
        try:
            return REGION_BASE_URLS[self.region]
        except KeyError:
            from qwbatch.core.errors import ConfigError

            known = ", ".join(sorted(REGION_BASE_URLS))
            raise ConfigError(
                f"unknown region {self.region!r} (known: {known}); "
                "or set QWBATCH_DASHSCOPE_BASE_URL"
            ) from None

    def currency(self) -> str:
        return REGION_CURRENCY.get(self.region, "USD")

    def bfl_key(self) -> str:
        """BFL's raw key, for the ``x-key`` header only. Never log what this returns."""
        return self.bfl_api_key.get_secret_value() if self.bfl_api_key else ""

    def openai_key(self) -> str:
        """OpenAI's raw key, for the Authorization header only. Never log it."""
        return self.openai_api_key.get_secret_value() if self.openai_api_key else ""

    def api_key(self) -> str:
        """The raw key, for the Authorization header only. Never log what this returns."""
        return self.dashscope_api_key.get_secret_value() if self.dashscope_api_key else ""


def settings_with(overrides: Mapping[str, Any] | None) -> Settings:
    """Settings from the environment, with the given fields (those not None) on top."""
    return Settings(**{k: v for k, v in (overrides or {}).items() if v is not None})
