"""The price table and cost arithmetic: what one image costs, and what a set of requests will.

Qwen-Image is billed per successfully generated output image, at one price per model and
region whatever the resolution; input images and failed requests are free
(``docs/providers/dashscope.md`` §7). Beijing prices are in CNY, Singapore prices in USD.

**One source of truth.** The default prices are the model table's ``price_<region>`` fields
(``qwbatch/data/models.toml``, taken from §7), so a new model brings its price in its one row.
:class:`PriceTable` is the only reader of those fields: the engine (catalog ``unit_price`` and
``cost``), the estimate, the budget and the report all price through it. Negotiated prices
override the defaults, most specific last:

1. the model table (and ``QWBATCH_MODELS_FILE`` rows, which may carry ``price_<region>``);
2. a TOML file named by ``QWBATCH_PRICES_FILE``, one table per region::

       [singapore]
       "qwen-image-2.0" = 0.03
       [beijing]
       "qwen-image-2.0-pro" = 0.45

3. ``QWBATCH_PRICES='{"qwen-image-2.0": 0.03}'``: prices for the run's own region.

**Other providers.** FLUX (BFL) and GPT Image (OpenAI) rows are billed in USD whatever the
region, by their ``pricing_rule`` (``qwbatch.core.model_table.Pricing``): per megapixel of
output and input (BFL), or per token (OpenAI, whose bill comes from ``usage``; estimates and
budget holds use a per-image approximation by quality, scaled by area). Their prices count in
runs whose currency is USD (regions singapore, virginia); :meth:`PriceTable.request_price`
prices one request by its size and inputs, :meth:`PriceTable.unit_price` a model at its
default size. What the provider reports (BFL's ``cost``, OpenAI's ``usage``) is the bill.

Money is :class:`~decimal.Decimal` here, so sums are exact (0.035 × 3 is 0.105, not
0.10500000000000001); a catalog row holds it as a float, rounded at that boundary.
"""

from __future__ import annotations

import heapq
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from qwbatch.core.errors import ConfigError
from qwbatch.core.model_table import MEGAPIXEL, ModelSpec, ModelTable
from qwbatch.core.settings import Settings
from qwbatch.core.types import RenderRequest

#: Money is rounded to this many decimal places where it leaves Decimal (JSON, floats).
MONEY_PLACES = 6
#: The by-tag line of requests that carry no tag at all.
UNTAGGED = "(untagged)"

ZERO = Decimal(0)


def money(value: float | int | str | Decimal) -> Decimal:
    """An amount as Decimal, read from its shortest text (so ``0.035`` stays 0.035)."""
    if isinstance(value, Decimal):
        return value
    try:
        amount = Decimal(str(value))
    except ArithmeticError:
        raise ConfigError(f"not an amount of money: {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ConfigError(f"an amount of money must be a finite number >= 0, got {value!r}")
    return amount


def as_float(amount: Decimal) -> float:
    """An amount for a float column or JSON: rounded to :data:`MONEY_PLACES` places."""
    return float(round(amount, MONEY_PLACES))


def tag_label(key: str, value: str) -> str:
    """How a tag is named in cost lines: ``key=value``, or ``key`` for a plain label."""
    return f"{key}={value}" if value else key


def tag_labels(tags: Iterable[tuple[str, str]]) -> list[str]:
    """The cost-line names of a request's tags; :data:`UNTAGGED` when it has none."""
    labels = [tag_label(key, value) for key, value in tags]
    return labels or [UNTAGGED]


def usd_image_price(
    spec: ModelSpec, size: str | None, *, inputs: int = 0, quality: str | None = None
) -> Decimal | None:
    """The USD price of one image of a BFL or OpenAI model at ``size`` (its default if None).

    Megapixel pricing: ``first_mp + (out_MP - 1) * per_mp + in_MP * per_mp`` (at least
    ``first_mp``), each input counted at the output's size (the inputs' own sizes are not
    known before they are sent). Token pricing: the quality's per-image figure (``high``
    when not given: ``auto`` may choose it) scaled by area over 1024×1024. None when the row
    names no price.
    """
    pricing = spec.pricing
    megapixels = money(spec.size_pixels(size)) / MEGAPIXEL
    if spec.pricing_rule == "megapixel":
        if not pricing.first_mp:
            return None
        first, per = money(pricing.first_mp), money(pricing.per_mp)
        return first + max(megapixels - 1, ZERO) * per + inputs * megapixels * per
    if spec.pricing_rule == "token":
        price = pricing.per_image.get(quality or "high") or pricing.per_image.get("high")
        return None if price is None else money(price) * megapixels
    price = pricing.per_image.get("any")
    return None if price is None else money(price)


def token_cost(
    spec: ModelSpec, *, text_in: int = 0, image_in: int = 0, image_out: int = 0
) -> Decimal:
    """What usage tokens cost in USD at ``spec``'s per-million token prices."""
    pricing = spec.pricing
    millions = (
        text_in * money(pricing.text_in)
        + image_in * money(pricing.image_in)
        + image_out * money(pricing.image_out)
    )
    return millions / 1_000_000


class PriceTable:
    """Unit prices (per output image) for one region, in that region's currency."""

    def __init__(
        self,
        region: str,
        currency: str,
        prices: Mapping[str, Decimal],
        usd_specs: Mapping[str, ModelSpec] | None = None,
    ) -> None:
        self.region = region
        self.currency = currency
        self._prices = dict(prices)
        #: Models priced by size or tokens in USD (BFL, OpenAI) without a negotiated price.
        self._usd_specs = dict(usd_specs or {})

    @classmethod
    def load(cls, settings: Settings, table: ModelTable) -> PriceTable:
        """The run's prices: model table, then ``prices_file``, then ``prices`` (see above)."""
        region = settings.region
        currency = settings.currency()
        prices: dict[str, Decimal] = {}
        usd_specs: dict[str, ModelSpec] = {}
        for name in table.names():
            spec = table.get(name)
            if spec.usd_priced:
                price = usd_image_price(spec, None) if currency == "USD" else None
                if price is not None:
                    prices[name] = price
                    usd_specs[name] = spec
                continue
            regional = spec.price(region)
            if regional is not None:
                prices[name] = money(regional)
        overrides: dict[str, Decimal] = {}
        if settings.prices_file is not None:
            by_section = read_prices_file(settings.prices_file)
            # [bfl] and [openai] sections: flat USD prices per image for those providers.
            for provider in ("bfl", "openai") if currency == "USD" else ():
                overrides.update(by_section.get(provider, {}))
            overrides.update(by_section.get(region, {}))
        overrides.update({name: money(price) for name, price in settings.prices.items()})
        prices.update(overrides)
        for name in overrides:
            usd_specs.pop(name, None)  # a negotiated flat price wins over the formula
        return cls(region, currency, prices, usd_specs)

    def unit_price(self, model: str) -> Decimal | None:
        """Price of one image of ``model``; None when no table or override names one."""
        return self._prices.get(model)

    def catalog_price(self, model: str) -> float:
        """The unit price as a catalog float (0.0 for an unpriced model: see the estimate)."""
        price = self._prices.get(model)
        return as_float(price) if price is not None else 0.0

    def request_price(self, request: RenderRequest) -> Decimal | None:
        """Price of one image of ``request``: by its size and inputs for models priced per
        megapixel or token (BFL, OpenAI), else the model's unit price."""
        quality = dict(request.params).get("quality")
        return self.price_for(
            request.model,
            request.size,
            inputs=len(request.input_images),
            quality=str(quality) if quality else None,
        )

    def priced_per_request(self, model: str) -> bool:
        """Whether ``model``'s price depends on the request's size, inputs or quality."""
        return model in self._usd_specs

    def price_for(
        self, model: str, size: str | None, *, inputs: int = 0, quality: str | None = None
    ) -> Decimal | None:
        """Price of one image of ``model`` at ``size`` with ``inputs`` edit inputs and
        ``quality`` (see :meth:`request_price`)."""
        spec = self._usd_specs.get(model)
        if spec is None:
            return self._prices.get(model)
        return usd_image_price(spec, size, inputs=inputs, quality=quality)

    def catalog_request_price(self, request: RenderRequest) -> float:
        """:meth:`request_price` as a catalog float (0.0 when unpriced)."""
        price = self.request_price(request)
        return as_float(price) if price is not None else 0.0

    def cost(self, model: str, images: int) -> Decimal:
        """What ``images`` images of ``model`` cost (zero for an unpriced model)."""
        return images * (self._prices.get(model) or ZERO)

    def request_cost(self, request: RenderRequest) -> Decimal:
        """The most a request can cost: all of its ``n`` images billed."""
        return request.n * (self.request_price(request) or ZERO)

    def billed_cost(
        self, request: RenderRequest, billed_images: int, reported: float | None
    ) -> Decimal:
        """What a call cost: what the provider reported (BFL's cost, OpenAI's usage), else
        ``billed_images`` at the request's price."""
        if reported is not None:
            return money(reported)
        return billed_images * (self.request_price(request) or ZERO)

    def models(self) -> dict[str, Decimal]:
        return dict(sorted(self._prices.items()))


def read_prices_file(path: Path) -> dict[str, dict[str, Decimal]]:
    """A prices file: ``{region: {model: unit price}}`` (ConfigError when unreadable)."""
    try:
        data: dict[str, Any] = tomllib.loads(Path(path).read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read prices file {path}: {exc}") from exc
    out: dict[str, dict[str, Decimal]] = {}
    for region, rows in data.items():
        if not isinstance(rows, dict):
            raise ConfigError(
                f"prices file {path}: {region!r} must be a table of model = price, "
                'such as [singapore] "qwen-image-2.0" = 0.03'
            )
        out[region] = {}
        for model, price in rows.items():
            if isinstance(price, bool) or not isinstance(price, int | float):
                raise ConfigError(f"prices file {path}: [{region}] {model!r} is not a number")
            out[region][model] = money(price)
    return out


# --------------------------------------------------------------------------- estimates


@dataclass(slots=True)
class CostLine:
    """Requests, images and their cost under one heading (a model, a tag)."""

    requests: int = 0
    images: int = 0
    cost: Decimal = ZERO

    def add(self, images: int, cost: Decimal) -> None:
        self.requests += 1
        self.images += images
        self.cost += cost

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "images": self.images, "cost": as_float(self.cost)}


@dataclass(slots=True)
class Estimate:
    """What a set of requests will cost if every image is generated (and so billed).

    Each request counts under its model and under each of its tags (a request with two tags
    is in two tag lines, so tag lines may add up to more than ``total``); a folded duplicate
    row costs nothing, as in the catalog. ``unpriced`` counts images of models no price
    names: they are in ``images`` but not in any cost.
    """

    region: str
    currency: str
    requests: int = 0
    images: int = 0
    total: Decimal = ZERO
    by_model: dict[str, CostLine] = field(default_factory=dict)
    #: Label → line: a dict as requests are added, or :class:`TagLines` (a streaming plan's).
    by_tag: dict[str, CostLine] | TagLines = field(default_factory=dict)
    unit_prices: dict[str, Decimal] = field(default_factory=dict)
    unpriced: dict[str, int] = field(default_factory=dict)
    #: Images whose row expects text, and what re-rendering each of them once costs: the
    #: most one round of text re-rolls may add (``--text-rerolls`` rounds at most).
    text_images: int = 0
    reroll_round: Decimal = ZERO

    def add(self, request: RenderRequest, prices: PriceTable) -> Decimal:
        """Count one request; what it costs."""
        price = prices.request_price(request)
        if price is None:
            self.unpriced[request.model] = self.unpriced.get(request.model, 0) + request.n
        else:
            self.unit_prices[request.model] = price
        cost = request.n * (price or ZERO)
        self.requests += 1
        self.images += request.n
        self.total += cost
        self.by_model.setdefault(request.model, CostLine()).add(request.n, cost)
        by_tag = self.by_tag
        assert isinstance(by_tag, dict), "a streaming plan's tag lines are final"
        for label in tag_labels(request.tags):
            by_tag.setdefault(label, CostLine()).add(request.n, cost)
        if request.expected_text:
            self.add_text(request.n, price or ZERO)
        return cost

    def add_text(self, images: int, unit_price: Decimal) -> None:
        """Count ``images`` whose text is checked (each may be re-rendered)."""
        self.text_images += images
        self.reroll_round += images * unit_price

    def rerolls_at_most(self, rerolls: int) -> Decimal:
        """The most ``rerolls`` text re-rolls per image may add to ``total``."""
        return self.reroll_round * rerolls

    def largest_tags(self, count: int) -> list[tuple[str, CostLine]]:
        """The ``count`` tag lines of largest cost (ties by label), largest first.

        Picked without sorting every line: a manifest with an id as a tag has a line per
        row, and sorting a million of them took longer than the plan's hashing."""
        if isinstance(self.by_tag, TagLines):
            return self.by_tag.largest(count)
        if count < 1 or not self.by_tag:
            return []
        # The count-th largest cost first (Decimals alone compare fast), then only the lines
        # at or above it are ranked: lines tied at it by label, the fewest needed.
        floor = heapq.nlargest(count, (line.cost for line in self.by_tag.values()))[-1]
        above = [(tag, line) for tag, line in self.by_tag.items() if line.cost > floor]
        tied = heapq.nsmallest(
            count - len(above), (tag for tag, line in self.by_tag.items() if line.cost == floor)
        )
        above.sort(key=lambda item: (-item[1].cost, item[0]))
        return above + [(tag, self.by_tag[tag]) for tag in tied]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``total``, ``currency``, ``images``, ``by_model``, ``by_tag`` …"""
        by_model = {}
        for model, line in sorted(self.by_model.items()):
            price = self.unit_prices.get(model)
            entry = line.to_dict()
            entry["unit_price"] = as_float(price) if price is not None else None
            by_model[model] = entry
        return {
            "total": as_float(self.total),
            "currency": self.currency,
            "region": self.region,
            "requests": self.requests,
            "images": self.images,
            "by_model": by_model,
            "by_tag": (
                self.by_tag.to_dict()
                if isinstance(self.by_tag, TagLines)
                else {tag: line.to_dict() for tag, line in sorted(self.by_tag.items())}
            ),
            "unpriced": dict(sorted(self.unpriced.items())),
            "text_images": self.text_images,
            "reroll_round": as_float(self.reroll_round),
        }


class TagLines(Mapping[str, CostLine]):
    """An estimate's tag lines held as Arrow columns, a :class:`CostLine` made when read.

    A manifest with an id as a tag has a tag line per row: a million lines as Python
    objects took longer to build than the plan's hashing, while ``qwbatch estimate`` and a
    dry run show ten of them and count the rest. A streaming plan's ``Estimate.by_tag`` is
    this read-only mapping: its length and its largest lines come from the columns, and a
    line's ``CostLine`` is made when it is looked up or iterated (``--json`` lists them all).

    One line per distinct label: ``labels`` (string), ``requests`` and ``images`` (int64),
    and ``ranks`` (int64), the index of the line's cost in ``costs``, the distinct costs in
    ascending order: ranking by that index ranks by the exact cost.
    """

    def __init__(
        self,
        labels: pa.Array,
        requests: pa.Array,
        images: pa.Array,
        ranks: pa.Array,
        costs: Sequence[Decimal],
    ) -> None:
        self._labels = labels
        self._requests = requests
        self._images = images
        self._ranks = ranks
        self._costs = list(costs)
        #: label → (requests, images, rank), as Python values: made at the first look-up.
        self._values: dict[str, tuple[int, int, int]] | None = None

    def __len__(self) -> int:
        return len(self._labels)

    def __iter__(self) -> Iterator[str]:
        return iter(self._labels.to_pylist())

    def __getitem__(self, label: str) -> CostLine:
        if self._values is None:  # all lines at once: a look-up often leads to the rest
            columns = (self._requests, self._images, self._ranks)
            self._values = dict(
                zip(
                    self._labels.to_pylist(),
                    zip(*(column.to_pylist() for column in columns), strict=True),
                    strict=True,
                )
            )
        requests, images, rank = self._values[label]
        return CostLine(requests, images, self._costs[rank])

    def __repr__(self) -> str:
        return f"TagLines({dict(self.items())!r})"

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Label → ``CostLine.to_dict()``, by label: what ``Estimate.to_dict`` lists."""
        order = pc.sort_indices(self._labels)
        costs = [as_float(cost) for cost in self._costs]
        columns = (self._labels, self._requests, self._images, self._ranks)
        labels, requests, images, ranks = (column.take(order).to_pylist() for column in columns)
        return {
            label: {"requests": count, "images": made, "cost": costs[rank]}
            for label, count, made, rank in zip(labels, requests, images, ranks, strict=True)
        }

    def largest(self, count: int) -> list[tuple[str, CostLine]]:
        """The ``count`` lines of largest cost (ties by label), largest first."""
        if count < 1 or not len(self):
            return []
        ranked = pa.table({"rank": self._ranks, "label": self._labels})
        order = [("rank", "descending"), ("label", "ascending")]
        picked = pc.select_k_unstable(ranked, k=min(count, len(self)), sort_keys=order)
        return [(self._labels[at].as_py(), self._line(at)) for at in picked.to_pylist()]

    def _line(self, at: int) -> CostLine:
        return CostLine(
            self._requests[at].as_py(),
            self._images[at].as_py(),
            self._costs[self._ranks[at].as_py()],
        )


def estimate(requests: Iterable[RenderRequest], prices: PriceTable) -> Estimate:
    """The estimate of ``requests`` at ``prices`` (see :class:`Estimate`)."""
    result = Estimate(region=prices.region, currency=prices.currency)
    for request in requests:
        result.add(request, prices)
    return result


def format_money(amount: Decimal | float, currency: str) -> str:
    """``1.2345 USD``: four places, which shows every price in the table exactly."""
    return f"{Decimal(str(amount)).quantize(Decimal('0.0001'))} {currency}"
