"""The model table: each Qwen-Image model's endpoint, limits, rules and price, as data.

The bundled table is ``qwbatch/data/models.toml``; ``Settings.models_file`` names a TOML file
of the same shape whose rows extend or replace it, so a new model is a row, not code.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from qwbatch.core.errors import ConfigError

SizeRule = Literal["pixels", "sides", "presets", "fixed", "any"]
Mode = Literal["generate", "edit"]


def parse_size(size: str) -> tuple[int, int] | None:
    """``"1024*768"`` or ``"1024x768"`` → (1024, 768); None when it is not of that form."""
    text = size.strip().lower().replace("x", "*").replace("×", "*")
    parts = text.split("*")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        return None
    width, height = int(parts[0]), int(parts[1])
    return (width, height) if width > 0 and height > 0 else None


#: How a render is brought to a target size: cut to its aspect ratio, or fit inside and padded.
Fit = Literal["crop", "pad"]


@dataclass(frozen=True, slots=True)
class TargetSize:
    """A channel size to deliver at, exactly: ``300*250`` (crop) or ``300*250:pad``."""

    width: int
    height: int
    fit: Fit = "crop"

    def __str__(self) -> str:
        size = f"{self.width}*{self.height}"
        return size if self.fit == "crop" else f"{size}:pad"


def parse_target_size(text: str) -> TargetSize | None:
    """``"300*250"`` / ``"728x90:pad"`` → TargetSize; None when it is not of that form."""
    size, _, fit = text.strip().lower().partition(":")
    if fit not in ("", "crop", "pad"):
        return None
    try:
        parsed = parse_size(size)
    except ValueError:  # digits that int() refuses, such as "²"
        return None
    if parsed is None:
        return None
    return TargetSize(parsed[0], parsed[1], "pad" if fit == "pad" else "crop")


def _multiple(value: float, step: int, *, up: bool) -> int:
    rounded = math.ceil(value / step) if up else math.floor(value / step)
    return max(step, rounded * step)


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
    prices: dict[str, float] = field(default_factory=dict)
    declared: bool = False

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

    def render_size_for(self, target: TargetSize) -> str | None:
        """The size to render ``target`` at: the target itself when the model allows it,
        else the nearest allowed size of (about) the same aspect ratio, in multiples of
        16 px; None for a model that decides its own size. Cropping or padding the render
        then makes the ratio exact (:func:`qwbatch.core.images.fit_to`)."""
        if self.size_rule == "fixed":
            return None
        width, height = target.width, target.height
        exact = f"{width}*{height}"
        if self.size_problem(exact) is None:
            return exact
        ratio = width / height
        if self.size_rule == "presets":
            sizes = [parse_size(p) for p in self.presets]

            def distance(size: tuple[int, int]) -> tuple[float, int]:
                return abs(math.log(size[0] / size[1] / ratio)), abs(
                    size[0] * size[1] - width * height
                )

            w, h = min((s for s in sizes if s is not None), key=distance)
            return f"{w}*{h}"
        if self.size_rule == "pixels":
            pixels = min(max(width * height, self.min_pixels), self.max_pixels)
            up = pixels == self.min_pixels
            w = _multiple(math.sqrt(pixels * ratio), 16, up=up)
            h = _multiple(math.sqrt(pixels / ratio), 16, up=up)
            return f"{w}*{h}"
        # "sides": scale so both sides fit, then clamp (a ratio too wide for the bounds
        # is cut from the nearest one that fits)
        scale = max(self.min_side / min(width, height), 1.0)
        scale = min(scale, self.max_side / max(width, height))
        w = min(max(round(width * scale), self.min_side), self.max_side)
        h = min(max(round(height * scale), self.min_side), self.max_side)
        return f"{w}*{h}"

    def price(self, region: str) -> float | None:
        return self.prices.get(region)


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
                rows[name] = {**rows.get(name, {}), **row}
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
