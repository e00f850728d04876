"""The model table: each model's provider, endpoint, limits, rules and prices, as data.

The bundled table is ``qwbatch/data/models.toml``; ``Settings.models_file`` names a TOML file
of the same shape whose rows extend or replace it, so a new model is a row, not code. A row's
``provider`` names the client that serves it (``dashscope``, ``bfl``, ``openai``); how it is
priced is its ``pricing`` (see :class:`Pricing` and ``qwbatch.core.costs``).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from qwbatch.core.errors import ConfigError

SizeRule = Literal["pixels", "sides", "presets", "fixed", "any"]
Mode = Literal["generate", "edit"]
ProviderName = Literal["dashscope", "bfl", "openai"]
PROVIDERS: tuple[str, ...] = ("dashscope", "bfl", "openai")
#: How a model is billed: per output image, per megapixel (BFL), or per token (OpenAI).
PricingRule = Literal["image", "megapixel", "token"]
#: One megapixel as BFL counts it, in pixels (1024 × 1024).
MEGAPIXEL = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Pricing:
    """A model's prices in USD for the providers billed in USD whatever the region
    (BFL, OpenAI); DashScope's per-region prices stay in ``ModelSpec.prices``.

    - ``megapixel`` (BFL): ``first_mp + (output_MP - 1) * per_mp + input_MP * per_mp``,
      where a megapixel is :data:`MEGAPIXEL` pixels; ``per_image`` for models billed flat.
    - ``token`` (OpenAI): ``text_in``, ``image_in`` and ``image_out`` per million tokens for
      the bill; ``per_image`` maps a quality (low, medium, high) to an approximate price of one
      1024×1024 image for estimates and budget holds, scaled by pixel area.
    - ``image``: ``per_image["any"]`` per output image (gateways that report no usage).
    """

    first_mp: float = 0.0
    per_mp: float = 0.0
    text_in: float = 0.0
    image_in: float = 0.0
    image_out: float = 0.0
    per_image: dict[str, float] = field(default_factory=dict)


def parse_size(size: str) -> tuple[int, int] | None:
    """``"1024*768"`` or ``"1024x768"`` → (1024, 768); None when it is not of that form."""
    text = size.strip().lower().replace("x", "*").replace("×", "*")
    parts = text.split("*")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        return None
    width, height = int(parts[0]), int(parts[1])
    return (width, height) if width > 0 and height > 0 else None


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One row of the model table."""

    name: str
    tasks: tuple[Mode, ...] = ("generate", "edit")
    async_endpoint: bool = False
    n_max: int = 1
    size_rule: SizeRule = "any"
    min_pixels: int = 0
    max_pixels: int = 0
    min_side: int = 0
    max_side: int = 0
    presets: tuple[str, ...] = ()
    default_size: str = "1024*1024"
    prompt_max_chars: int = 800
    negative_prompt_max_chars: int = 500
    rps: float = 1.0
    max_in_flight: int = 2
    #: ``rps = "auto"`` in the row: ``rps`` is where the search for the account's limit
    #: starts (the bundled row's figure when a models file says "auto"), not a ceiling.
    auto_rps: bool = False
    prices: dict[str, float] = field(default_factory=dict)
    declared: bool = False
    #: Which client serves the model (``qwbatch.providers.registry``).
    provider: ProviderName = "dashscope"
    #: Every call is an async task, generation and edits alike (BFL); the provider's limit is
    #: on tasks in flight, so ``max_in_flight`` is the cap and ``rps`` only smooths bursts.
    task_only: bool = False
    #: Name of the limit several models share (BFL's active tasks per account); the model's
    #: own name when empty.
    limit_group: str = ""
    #: Most edit inputs one request may send.
    max_inputs: int = 3
    #: Both sides must be multiples of this many pixels (0: any).
    size_multiple: int = 0
    #: Largest long side / short side ratio (0: any).
    max_aspect: float = 0.0
    #: The date the provider stopped serving the model (a dead model stays as a row).
    shutdown: str = ""
    pricing_rule: PricingRule = "image"
    pricing: Pricing = field(default_factory=Pricing)
    #: Provider-specific parameters the ``params`` column may set: name → allowed values
    #: (a list of choices, or ``"int:LO..HI"`` / ``"float:LO..HI"`` / ``"bool"``).
    params: dict[str, Any] = field(default_factory=dict)

    def size_problem(self, size: str | None) -> str | None:
        """Why ``size`` (already ``W*H``) is not allowed for this model, or None if it is."""
        if size is None:
            return None
        if self.size_rule == "fixed":
            return f"{self.name} does not accept a size (it follows its input); leave size empty"
        parsed = parse_size(size)
        if parsed is None:
            return f"size {size!r} is not of the form W*H"
        width, height = parsed
        if self.size_multiple and (width % self.size_multiple or height % self.size_multiple):
            multiple = self.size_multiple
            return f"size {size}: both sides must be multiples of {multiple} for {self.name}"
        if self.max_aspect and max(width, height) > self.max_aspect * min(width, height):
            return f"size {size}: {self.name} allows aspect ratios up to {self.max_aspect:g}:1"
        if self.size_rule == "pixels" and not self.min_pixels <= width * height <= self.max_pixels:
            return (
                f"size {size} has {width * height} pixels; {self.name} needs between "
                f"{self.min_pixels} and {self.max_pixels}"
            )
        if self.size_rule == "sides" and not (
            self.min_side <= width <= self.max_side and self.min_side <= height <= self.max_side
        ):
            return f"size {size}: each side must be within [{self.min_side}, {self.max_side}] px"
        if self.size_rule == "presets" and f"{width}*{height}" not in self.presets:
            return f"size {size} is not one of {self.name}'s sizes: {', '.join(self.presets)}"
        return None

    def price(self, region: str) -> float | None:
        return self.prices.get(region)

    def checked_params(self, params: dict[str, Any]) -> tuple[tuple[str, Any], ...] | str:
        """``params`` normalised (sorted, values of the declared type), or why they are refused.

        A rule is a list of choices, ``"int:LO..HI"``, ``"float:LO..HI"`` or ``"bool"``.
        """
        out: dict[str, Any] = {}
        for name, value in params.items():
            rule = self.params.get(name)
            if rule is None:
                allowed = ", ".join(sorted(self.params)) or "none"
                return f"params.{name}: not a parameter of {self.name} (it takes: {allowed})"
            checked = _param_value(rule, value)
            if checked is None:
                return f"params.{name}={value!r}: {self.name} takes {_rule_text(rule)}"
            out[name] = checked
        return tuple(sorted(out.items()))

    @property
    def usd_priced(self) -> bool:
        """Whether the model is billed in USD whatever the region (BFL, OpenAI)."""
        return self.provider != "dashscope"

    def size_pixels(self, size: str | None) -> int:
        """Pixels of ``size``, or of the model's default size when it is None."""
        parsed = parse_size(size or self.default_size) or (1024, 1024)
        return parsed[0] * parsed[1]


#: ``ModelSpec.rps`` when a row gives none.
_DEFAULT_RPS = 1.0


def _spec_from_row(name: str, row: dict[str, Any], *, declared: bool = False) -> ModelSpec:
    row = dict(row)
    prices = {
        key.removeprefix("price_"): float(row.pop(key))
        for key in list(row)
        if key.startswith("price_")
    }
    for key in ("tasks", "presets"):
        if key in row:
            row[key] = tuple(row[key])
    if row.get("rps") == "auto":
        del row["rps"]
        row["auto_rps"] = True
    if "pricing" in row:
        pricing = dict(row["pricing"])
        unknown_pricing = set(pricing) - set(Pricing.__dataclass_fields__)
        if unknown_pricing:
            raise ConfigError(
                f"model table row {name!r} has unknown pricing fields: {sorted(unknown_pricing)}"
            )
        row["pricing"] = Pricing(**pricing)
    if row.get("provider", "dashscope") not in PROVIDERS:
        raise ConfigError(
            f"model table row {name!r}: provider must be one of {', '.join(PROVIDERS)}"
        )
    known = set(ModelSpec.__dataclass_fields__)
    unknown = set(row) - known
    if unknown:
        raise ConfigError(f"model table row {name!r} has unknown fields: {sorted(unknown)}")
    return ModelSpec(name=name, prices=prices, declared=declared, **row)


class ModelTable:
    """Name → ModelSpec, with a clear refusal for names it does not know."""

    def __init__(self, specs: dict[str, ModelSpec]) -> None:
        self._specs = dict(specs)

    @classmethod
    def load(
        cls, extra_file: Path | None = None, declared: list[str] | tuple[str, ...] = ()
    ) -> ModelTable:
        text = resources.files("qwbatch.data").joinpath("models.toml").read_text("utf-8")
        rows: dict[str, dict[str, Any]] = dict(tomllib.loads(text).get("models", {}))
        if extra_file is not None:
            try:
                extra = tomllib.loads(Path(extra_file).read_text("utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"cannot read models file {extra_file}: {exc}") from exc
            for name, row in extra.get("models", {}).items():
                base = rows.get(name, {})
                if row.get("rps") == "auto":  # search from the bundled figure
                    row = {**row, "rps": base.get("rps", _DEFAULT_RPS), "auto_rps": True}
                rows[name] = {**base, **row}
        specs = {name: _spec_from_row(name, row) for name, row in rows.items()}
        for name in declared:
            # A declared model: the user vouches for it; we check nothing we cannot know.
            specs.setdefault(
                name,
                ModelSpec(
                    name=name,
                    n_max=6,
                    size_rule="any",
                    prompt_max_chars=10_000,
                    negative_prompt_max_chars=10_000,
                    declared=True,
                ),
            )
        return cls(specs)

    def names(self) -> list[str]:
        return sorted(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def get(self, name: str) -> ModelSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise ConfigError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        return (
            f"unknown model {name!r}; known models: {', '.join(self.names())}. "
            "Declare it with QWBATCH_DECLARED_MODELS or add a row with QWBATCH_MODELS_FILE"
        )


def _param_value(rule: Any, value: Any) -> Any:
    """``value`` as ``rule`` types it, or None when it does not fit."""
    text = str(value).strip()
    if isinstance(rule, list):
        return text if text in rule else None
    if rule == "bool":
        lowered = text.lower()
        return True if lowered in ("true", "1") else False if lowered in ("false", "0") else None
    kind, _, bounds = str(rule).partition(":")
    low, _, high = bounds.partition("..")
    try:
        number: float = int(text) if kind == "int" else float(text)
    except ValueError:
        return None
    return number if float(low) <= number <= float(high) else None


def _rule_text(rule: Any) -> str:
    if isinstance(rule, list):
        return "one of " + ", ".join(map(str, rule))
    if rule == "bool":
        return "true or false"
    kind, _, bounds = str(rule).partition(":")
    return f"{'a whole number' if kind == 'int' else 'a number'} in {bounds.replace('..', '…')}"
