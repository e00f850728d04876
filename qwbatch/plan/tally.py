"""What a streaming plan counts for its estimate: requests and images by model, by price
shape and by (tag label, model), gathered block by block as Arrow tables (``Tally``) and
priced once the manifest is read (:func:`price`), giving the estimate ``costs.estimate``
gives for the same requests."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc

from qwbatch.core.costs import UNTAGGED, ZERO, CostLine, Estimate, PriceTable
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.core.types import RenderRequest
from qwbatch.plan.model import Plan

_ENTRIES = pa.list_(
    pa.struct([pa.field("key", pa.string(), nullable=False), pa.field("value", pa.string())])
)


class Tally:
    """Requests and images of the plan by model and by (tag label, model), for the estimate."""

    def __init__(self) -> None:
        self.models: dict[str, list[int]] = {}
        #: Images by (model, size, inputs, quality): what prices FLUX and GPT Image requests.
        self.priced: dict[tuple[str, str | None, int, str | None], int] = {}
        self._tag_tables: list[pa.Table] = []
        #: Images of rows that expect text, by model (only row-checker rows can).
        self.text_images: dict[str, int] = {}

    def add_text(self, requests: Iterable[RenderRequest]) -> None:
        """Count the images of ``requests`` whose text will be checked (and may re-roll)."""
        for request in requests:
            if request.expected_text:
                images = self.text_images.get(request.model, 0)
                self.text_images[request.model] = images + request.n

    def add(self, requests: pa.Table) -> None:
        """Count requests: columns ``model``, ``n`` and ``tags`` (map<string,string>)."""
        if requests.num_rows == 0:
            return
        requests = requests.combine_chunks()
        model, n = requests["model"].chunk(0), requests["n"].chunk(0)
        by_model = pa.table({"model": model, "n": n}).group_by("model", use_threads=False)
        for row in by_model.aggregate([("n", "sum"), ("n", "count")]).to_pylist():
            line = self.models.setdefault(row["model"], [0, 0])
            line[0] += row["n_count"]
            line[1] += row["n_sum"]
        shapes = requests.select(["model", "size", "inputs", "quality", "n"])
        grouped = shapes.group_by(["model", "size", "inputs", "quality"], use_threads=False)
        for row in grouped.aggregate([("n", "sum")]).to_pylist():
            shape = (row["model"], row["size"], row["inputs"], row["quality"])
            self.priced[shape] = self.priced.get(shape, 0) + row["n_sum"]
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
        self._tag_tables.append(
            entries.group_by(["label", "model"], use_threads=False)
            .aggregate([("n", "count"), ("n", "sum")])
            .select(list(_TAG_COLUMNS))
        )

    def estimate(self, prices: PriceTable) -> Estimate:
        """The estimate ``costs.estimate`` gives for the same requests."""
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
        # Tag lines are often one per row (an id as a tag): share their equal costs.
        costs: dict[tuple[str, int], Decimal] = {}
        by_tag = result.by_tag
        # Each block's counts added up here, a slice of Python values at a time: a group-by
        # of them all would hold a hash of every label (the plan's largest transient), and
        # summing per block gives the same lines.
        lines = (
            zip(*(chunk[name].to_pylist() for name in _TAG_COLUMNS), strict=True)
            for table in self._tag_tables
            for chunk in table.to_batches(max_chunksize=_TAG_SLICE)
        )
        for label, model, requests, images in itertools.chain.from_iterable(lines):
            tag_cost = costs.get((model, images))
            if tag_cost is None:
                tag_cost = costs[(model, images)] = images * price_of[model]
            line = by_tag.get(label)
            if line is None:
                by_tag[label] = CostLine(requests, images, tag_cost)
            else:
                line.requests += requests
                line.images += images
                line.cost += tag_cost
        return result


_TAG_COLUMNS = ("label", "model", "n_count", "n_sum")
_TAG_SLICE = 32_768


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
