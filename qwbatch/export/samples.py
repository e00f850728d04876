"""Which catalog rows an export holds, under which names, in which split, with which text.

A sample is one output image and its catalog record. The selection is the catalog's view
(:func:`qwbatch.catalog.view.catalog_records`: the newest run's records of each row, or one
run's), narrowed to ``statuses`` and to ``FIELD=PATTERN`` filters as ``qwbatch report``
takes them, and to records with an image. It stays in Arrow (a few hundred bytes a row);
samples are made from it a batch at a time.

Names are fixed by the row id and image index alone, so every export of the same rows
names them alike: ``{row_id}`` for the first image of a row, ``{row_id}-2`` for the
second…, made safe as a file name (:func:`qwbatch.storage.stores.sanitize_key_part`: a name
that had to change gets a hash of the original, so two ids never share a name). WebDataset
keys also lose their dots (the library splits a key from its extensions at the first dot).

Splits: ``split_by`` names a field (a catalog column or ``tag.NAME``) whose value is the
split; otherwise, and for rows where that field is empty, ``val_fraction`` of the rows go to
``validation`` by a hash of the row id (the same rows whatever else is exported), the rest
to ``train``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from qwbatch.catalog import review
from qwbatch.catalog.view import RowFilter, catalog_records
from qwbatch.core.errors import ConfigError
from qwbatch.storage.stores import ObjectStore, sanitize_key_part

#: Catalog columns an export reads. Never ``output_uri`` (a store location), provider ids
#: or error messages: an export holds the image and what describes it, nothing else.
SOURCE_COLUMNS = (
    "run_id",
    "row_id",
    "request_key",
    "mode",
    "model",
    "prompt",
    "negative_prompt",
    "size",
    "n",
    "seed",
    "image_index",
    "status",
    "output_uri",
    "width",
    "height",
    "bytes",
    "sha256",
    "currency",
    "cost",
    "tags",
)
#: What each sample's metadata holds (the JSON of WebDataset, the columns of HF and CSV).
RECORD_FIELDS = (
    "row_id",
    "image_index",
    "run_id",
    "request_key",
    "mode",
    "model",
    "prompt",
    "negative_prompt",
    "size",
    "seed",
    "width",
    "height",
    "sha256",
    "currency",
    "cost",
    "tags",
)
DEFAULT_STATUSES = ("succeeded", "deduplicated")
TRAIN, VALIDATION = "train", "validation"
_BATCH_ROWS = 2048


@dataclass(frozen=True, slots=True)
class Sample:
    """One image to export: its name, split, text and catalog record (``tags`` a dict)."""

    name: str
    split: str
    text: str
    record: dict[str, Any]

    @property
    def key(self) -> str:
        """The WebDataset key: the name without dots (see the module docstring)."""
        if "." not in self.name:
            return self.name
        digest = hashlib.sha256(self.name.encode()).hexdigest()[:12]
        return f"{self.name.replace('.', '_')}-h{digest}"

    @property
    def image_key(self) -> tuple[str, int]:
        """The stored image's request key and index."""
        return self.record["request_key"], int(self.record["image_index"])

    def metadata(self) -> dict[str, Any]:
        """The record as exported (:data:`RECORD_FIELDS`), plus ``split``."""
        values = {name: self.record.get(name) for name in RECORD_FIELDS}
        return {**values, "split": self.split}

    def metadata_json(self) -> str:
        return json.dumps(self.metadata(), ensure_ascii=False, sort_keys=True)


def sample_name(row_id: str, image_index: int) -> str:
    """``row-7`` → ``row-7`` (first image), ``row-7-2`` (second); always a safe file name."""
    base = sanitize_key_part(row_id, max_length=96)
    return base if image_index == 0 else f"{base}-{image_index + 1}"


def field_value(row: dict[str, Any], name: str) -> Any:
    """A row's ``name``: a catalog column, or ``tag.NAME`` (``tags.NAME``) for a tag."""
    if name.startswith(("tag.", "tags.")):
        return dict(row.get("tags") or []).get(name.split(".", 1)[1])
    if name not in row:
        known = ", ".join(sorted(row))
        raise ConfigError(f"unknown field {name!r}: a catalog column ({known}) or tag.NAME")
    return row[name]


def split_of(row_id: str, val_fraction: float) -> str:
    """``validation`` for about ``val_fraction`` of row ids (by hash), else ``train``."""
    if val_fraction <= 0:
        return TRAIN
    point = int.from_bytes(hashlib.sha256(row_id.encode()).digest()[:8], "big") / 2.0**64
    return VALIDATION if point < val_fraction else TRAIN


@dataclass(frozen=True, slots=True)
class Selection:
    """What to export: which records, and how to name, split and caption them."""

    run: str | None = None
    statuses: Sequence[str] = DEFAULT_STATUSES
    filters: Sequence[RowFilter] = ()
    caption_column: str = "prompt"
    split_by: str | None = None
    val_fraction: float = 0.0
    #: Only images whose newest review approves them (:mod:`qwbatch.catalog.review`).
    approved_only: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), not {self.val_fraction}")

    def table(self, store: ObjectStore) -> pa.Table:
        """The selected records (Arrow), with an image each, sorted by row id and index."""
        table = catalog_records(store, run=self.run, latest=True, columns=SOURCE_COLUMNS)
        keep = pc.and_(
            pc.is_in(table["status"], value_set=pa.array(list(self.statuses), pa.string())),
            pc.and_(pc.is_valid(table["output_uri"]), pc.is_valid(table["image_index"])),
        )
        table = table.filter(keep)
        if self.approved_only:
            keep = review.approved(review.read_decisions(store))
            images = zip(
                table["row_id"].to_pylist(),
                table["request_key"].to_pylist(),
                table["image_index"].to_pylist(),
                strict=True,
            )
            table = table.filter(pa.array([image in keep for image in images], pa.bool_()))
        return table

    def samples(self, table: pa.Table) -> Iterator[Sample]:
        """The samples of ``table`` that pass the filters, in its order."""
        for batch in table.to_batches(max_chunksize=_BATCH_ROWS):
            for row in batch.to_pylist():
                if not all(f.matches(row) for f in self.filters):
                    continue
                row["tags"] = dict(row.get("tags") or [])
                yield Sample(
                    name=sample_name(row["row_id"], int(row["image_index"])),
                    split=self._split(row),
                    text=self._text(row),
                    record=row,
                )

    def _split(self, row: dict[str, Any]) -> str:
        if self.split_by is not None:
            value = field_value(row, self.split_by)
            if value not in (None, ""):
                return sanitize_key_part(str(value), max_length=64)
        return split_of(row["row_id"], self.val_fraction)

    def _text(self, row: dict[str, Any]) -> str:
        value = field_value(row, self.caption_column)
        return "" if value is None else str(value)
