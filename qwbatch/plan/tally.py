"""What a streaming plan counts for its estimate: requests and images by model, by price
shape and by (tag label, model), gathered block by block as Arrow tables (``Tally``) and
priced once the manifest is read (:func:`price`), giving the estimate ``costs.estimate``
gives for the same requests."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc

from qwbatch.core.costs import UNTAGGED, ZERO, CostLine, Estimate, PriceTable, TagLines
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.core.types import RenderRequest
from qwbatch.plan.model import Plan

_ENTRIES = pa.list_(
    pa.struct([pa.field("key", pa.string(), nullable=False), pa.field("value", pa.string())])
)


class Tally:
    """Requests and images of the plan by model and by (tag label, model), for the estimate.

    Blocks are counted a few at a time (:data:`TALLY_ROWS` requests): a group-by has a
    fixed cost (~1.5 ms) however few rows it groups, and the plan's blocks are small.
    """

    def __init__(self) -> None:
        self.models: dict[str, list[int]] = {}
        #: Images by (model, size, inputs, quality): what prices FLUX and GPT Image requests.
        self.priced: dict[tuple[str, str | None, int, str | None], int] = {}
        #: One row per (request, tag label): columns ``label``, ``model`` and ``n``.
        self._tags: list[pa.Table] = []
        #: Images of rows that expect text, by model (only row-checker rows can).
        self.text_images: dict[str, int] = {}
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def add_text(self, requests: Iterable[RenderRequest]) -> None:
        """Count the images of ``requests`` whose text will be checked (and may re-roll)."""
        for request in requests:
            if request.expected_text:
                images = self.text_images.get(request.model, 0)
                self.text_images[request.model] = images + request.n

    def add(self, requests: pa.Table) -> None:
        """Count requests: :data:`REQUEST_COUNTS` columns."""
        if requests.num_rows == 0:
            return
        self._pending.append(requests)
        self._pending_rows += requests.num_rows
        if self._pending_rows >= TALLY_ROWS:
            self._count()

    def _count(self) -> None:
        """Count the requests added since the last count."""
        if not self._pending:
            return
        requests = pa.concat_tables(self._pending).combine_chunks()
        self._pending, self._pending_rows = [], 0
        model, n = requests["model"].chunk(0), requests["n"].chunk(0)
        shapes = requests.select(["model", "size", "inputs", "quality", "n"])
        grouped = shapes.group_by(["model", "size", "inputs", "quality"], use_threads=False)
        for row in grouped.aggregate([("n", "sum"), ("n", "count")]).to_pylist():
            shape = (row["model"], row["size"], row["inputs"], row["quality"])
            self.priced[shape] = self.priced.get(shape, 0) + row["n_sum"]
            line = self.models.setdefault(row["model"], [0, 0])
            line[0] += row["n_count"]
            line[1] += row["n_sum"]
        tags = requests["tags"].chunk(0).cast(_ENTRIES)  # list kernels do not take maps
        flat = tags.flatten()
        keys, values = flat.field("key"), flat.field("value")
        parents = pc.list_parent_indices(tags)
        labels = pc.if_else(
            pc.equal(values, ""), keys, pc.binary_join_element_wise(keys, values, "=")
        )
        untagged = pc.indices_nonzero(pc.equal(pc.fill_null(pc.list_value_length(tags), 0), 0))
        entries = pa.table(
            {
                "label": pa.chunked_array(
                    [labels, pa.array([UNTAGGED] * len(untagged), pa.string())], pa.string()
                ),
                "model": pa.chunked_array([pc.take(model, parents), pc.take(model, untagged)]),
                "n": pa.chunked_array([pc.take(n, parents), pc.take(n, untagged)]),
            }
        )
        # Kept as they are (~35 bytes an entry) and summed once, at the end: a group-by per
        # block hashed every label once more, and most labels (an id as a tag) occur once.
        self._tags.append(entries.combine_chunks())

    def estimate(self, prices: PriceTable) -> Estimate:
        """The estimate ``costs.estimate`` gives for the same requests (its tag lines as
        ``costs.TagLines``)."""
        self._count()
        result = Estimate(region=prices.region, currency=prices.currency)
        shaped: dict[str, Decimal] = {}
        for (model, size, inputs, quality), images in self.priced.items():
            if prices.priced_per_request(model):
                each = prices.price_for(model, size, inputs=inputs, quality=quality) or ZERO
                shaped[model] = shaped.get(model, ZERO) + images * each
        for model, (requests, images) in self.models.items():
            price = prices.unit_price(model)
            if price is None:
                result.unpriced[model] = images
            else:
                result.unit_prices[model] = price
            cost = shaped[model] if model in shaped else images * (price or ZERO)
            result.requests += requests
            result.images += images
            result.total += cost
            result.by_model[model] = CostLine(requests, images, cost)
        # A model priced per request shares its cost among its tag lines by images.
        price_of = {
            model: (
                shaped[model] / images
                if model in shaped and images
                else prices.unit_price(model) or ZERO
            )
            for model, (_, images) in self.models.items()
        }
        for model, text_images in self.text_images.items():
            result.add_text(text_images, prices.unit_price(model) or ZERO)
        result.by_tag = _tag_lines(self._tags, price_of)
        self._tags = []
        return result


#: Requests counted at a time (see :class:`Tally`).
TALLY_ROWS = 131_072


def _tag_lines(tags: list[pa.Table], price_of: dict[str, Decimal]) -> TagLines:
    """The tag lines of ``tags`` (a row per request and tag label: ``label``, ``model``,
    ``n``), costed at ``price_of`` per image: one line per label.

    A line's cost is ``images × price`` of each of its models, summed: computed once per
    distinct (model, images) pair for labels met once (a handful of pairs, even with an id
    as a tag) and in Python for labels met more often (few, however many rows they hold);
    then each line gets the rank of its cost among the distinct costs, in Arrow."""
    entries = pa.concat_tables([_TAG_ENTRIES.empty_table(), *tags])
    encoded = pc.dictionary_encode(entries["label"])
    # The chunks share one dictionary, complete in each.
    last = encoded.num_chunks - 1
    names = encoded.chunk(last).dictionary if last >= 0 else pa.array([], pa.string())
    index = pa.chunked_array([chunk.indices for chunk in encoded.chunks], pa.int32())
    index = index.combine_chunks()
    # Labels are numbered as first met: a row whose number exceeds every earlier row's
    # meets its label first; a label met again is among the numbers of the other rows.
    first = pc.greater(index, _shifted(pc.cumulative_max(index)))
    again = pc.unique(pc.filter(index, pc.invert(first)))
    repeated = pc.is_in(index, value_set=again)
    once = entries.filter(pc.invert(repeated))
    models, images = once["model"].combine_chunks(), once["n"].combine_chunks()
    distinct = (
        pa.table({"model": models, "images": images})
        .group_by(["model", "images"], use_threads=False)
        .aggregate([])
    )
    pair_costs = [
        count * price_of[model]
        for model, count in zip(
            distinct["model"].to_pylist(), distinct["images"].to_pylist(), strict=True
        )
    ]
    # Labels met more than once: summed by (label, model) in Arrow, costed in Python.
    many = (
        pa.table({"index": pc.filter(index, repeated), "model": entries["model"].filter(repeated)})
        .append_column("n", entries["n"].filter(repeated))
        .group_by(["index", "model"], use_threads=False)
        .aggregate([("n", "count"), ("n", "sum")])
    )
    summed: dict[int, CostLine] = {}
    for at, model, requests, count in zip(
        *(many[name].to_pylist() for name in ("index", "model", "n_count", "n_sum")), strict=True
    ):
        line = summed.setdefault(at, CostLine())
        line.requests += requests
        line.images += count
        line.cost += count * price_of[model]
    costs = sorted({*pair_costs, *(line.cost for line in summed.values())})
    rank_of = {cost: at for at, cost in enumerate(costs)}
    pair_ranks = pa.array([rank_of[cost] for cost in pair_costs], pa.int64())
    found = pc.index_in(
        _pair_keys(models, images), value_set=_pair_keys(distinct["model"], distinct["images"])
    )
    lines = summed.values()
    return TagLines(
        pa.concat_arrays(
            [once["label"].combine_chunks(), names.take(pa.array(summed, pa.int64()))]
        ),
        pa.concat_arrays(
            [_ones(once.num_rows), pa.array([line.requests for line in lines], pa.int64())]
        ),
        pa.concat_arrays([images, pa.array([line.images for line in lines], pa.int64())]),
        pa.concat_arrays(
            [
                pc.take(pair_ranks, found),
                pa.array([rank_of[line.cost] for line in lines], pa.int64()),
            ]
        ),
        costs,
    )


def _shifted(values: pa.Array) -> pa.Array:
    """``values`` one place later, -1 first."""
    if not len(values):
        return values
    return pa.concat_arrays([pa.array([-1], values.type), values.slice(0, len(values) - 1)])


def _ones(count: int) -> pa.Array:
    """``count`` ones (int64)."""
    return pc.cast(pa.nulls(count, pa.int8()).is_null(), pa.int64())


def _pair_keys(models: pa.Array, images: pa.Array) -> pa.Array:
    """One text per (model, images) pair, to look pairs up in Arrow."""
    return pc.binary_join_element_wise(models, pc.cast(images, pa.string()), "\x1f")


#: What the tally keeps of each (request, tag label) (an empty table of it is made when
#: needed: making one imports pandas, where installed).
_TAG_ENTRIES = pa.schema([("label", pa.string()), ("model", pa.string()), ("n", pa.int64())])


#: What the estimate needs of a request (size, inputs and quality price FLUX and GPT Image).
REQUEST_COUNTS = pa.schema(
    [
        ("model", pa.string()),
        ("n", pa.int64()),
        ("tags", pa.map_(pa.string(), pa.string())),
        ("size", pa.string()),
        ("inputs", pa.int64()),
        ("quality", pa.string()),
    ]
)


def request_counts(requests: list[RenderRequest]) -> pa.Table:
    """REQUEST_COUNTS of requests the row checker made."""
    return pa.table(
        {
            "model": [r.model for r in requests],
            "n": [r.n for r in requests],
            "tags": [list(r.tags) for r in requests],
            "size": [r.size for r in requests],
            "inputs": [len(r.input_images) for r in requests],
            "quality": [_quality(r) for r in requests],
        },
        schema=REQUEST_COUNTS,
    )


def _quality(request: RenderRequest) -> str | None:
    quality = dict(request.params).get("quality")
    return str(quality) if quality else None


def fast_counts(fast: pa.Table, chosen: pa.Array) -> pa.Table:
    """REQUEST_COUNTS of fast rows: no edit inputs and no params (those go slow)."""
    picked = fast.select(["model", "n", "tags", "size"]).take(chosen)
    rows = picked.num_rows
    return picked.append_column("inputs", pa.array([0] * rows, pa.int64())).append_column(
        "quality", pa.nulls(rows, pa.string())
    )


def price(plan: Plan, tally: Tally, settings: Settings, table: ModelTable) -> None:
    """Set the plan's estimate and the counts it gives (requests, images)."""
    estimate = tally.estimate(PriceTable.load(settings, table))
    plan.estimate = estimate
    plan.requests = estimate.requests
    plan.images = estimate.images
    plan.images_by_model = {model: line.images for model, line in estimate.by_model.items()}
