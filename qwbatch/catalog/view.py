"""What a person looks at: the catalog rows of one run, or the latest of every row, filtered.

Contact sheets and HTML reports show the same selection:

- ``run=None``: for each manifest row id, the records of the newest run that recorded it
  (run ids sort by time), so a row rendered last week and deduplicated today shows once;
- ``run="latest"``: the newest run only; ``run=RUN_ID``: that run only.

Filters narrow it down: ``status=succeeded``, ``model=qwen-image-2.0``, ``id=poster-*``,
``tag.campaign=autumn*``, ``prompt=*lantern*``, ``status!=succeeded``. The value is a
shell-style pattern (``*``, ``?``, ``[…]``), matched case-sensitively against the whole
field; several filters must all match. Rows come out sorted by row id, then image index.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from qwbatch.catalog import table as catalog
from qwbatch.core import images
from qwbatch.core.errors import ConfigError, ImageError, StorageError, StorageTransientError
from qwbatch.storage.layout import output_key, output_of, thumb_key
from qwbatch.storage.stores import ObjectStore

#: Catalog columns a view reads (everything but the timings and provider ids).
VIEW_COLUMNS = (
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
    "error_code",
    "error_message",
    "attempts",
    "output_uri",
    "width",
    "height",
    "unit_price",
    "currency",
    "cost",
    "tags",
    "text_expected",
    "text_found",
    "text_cer",
    "text_ok",
    "rerolls",
)
#: Filter names that are not catalog columns: ``id`` is ``row_id``.
_ALIASES = {"id": "row_id"}
_FILTERABLE = frozenset(
    {"run_id", "row_id", "request_key", "mode", "model", "prompt", "size", "status"}
    | {"error_code", "currency", "seed", "n", "image_index"}
)
_FILTER_RE = re.compile(r"\A\s*([A-Za-z_][A-Za-z0-9_.:-]*)\s*(!=|=)(.*)\Z", re.DOTALL)


@dataclass(frozen=True, slots=True)
class RowFilter:
    """``field=pattern`` or ``field!=pattern``; ``field`` is a column, ``id`` or ``tag.NAME``."""

    field: str
    pattern: str
    negate: bool = False

    @classmethod
    def parse(cls, text: str) -> RowFilter:
        """``"tag.campaign=autumn*"`` → RowFilter; ConfigError with the accepted forms."""
        match = _FILTER_RE.match(text)
        if match is None:
            raise ConfigError(
                f"bad filter {text!r}: use FIELD=PATTERN or FIELD!=PATTERN, e.g. "
                "status=succeeded, model=qwen-image-2.0, id=poster-*, tag.campaign=autumn"
            )
        name, op, pattern = match.groups()
        name = _ALIASES.get(name, name)
        if not (name in _FILTERABLE or name.startswith(("tag.", "tags."))):
            known = ", ".join(sorted({*_FILTERABLE, "id", "tag.NAME"}))
            raise ConfigError(f"bad filter {text!r}: unknown field {name!r} (known: {known})")
        return cls(field=name, pattern=pattern.strip(), negate=op == "!=")

    def matches(self, row: dict[str, Any]) -> bool:
        if self.field.startswith(("tag.", "tags.")):
            tags = dict(row.get("tags") or [])
            value = tags.get(self.field.split(".", 1)[1])
        else:
            value = row.get(self.field)
        hit = value is not None and fnmatch.fnmatchcase(str(value), self.pattern)
        return hit != self.negate


def parse_filters(texts: Iterable[str]) -> list[RowFilter]:
    return [RowFilter.parse(text) for text in texts]


def run_ids(store: ObjectStore) -> list[str]:
    """Every run id in the catalog, oldest first."""
    table = catalog.read_catalog(store, ["run_id"])
    return sorted(set(table.column("run_id").to_pylist()))


def select_rows(
    store: ObjectStore,
    *,
    run: str | None = None,
    filters: Sequence[RowFilter] = (),
) -> list[dict[str, Any]]:
    """The catalog rows to show (see the module docstring), as dicts with ``tags`` a dict."""
    # Parts written before a column existed read it as nulls (output_key, the text checks').
    table = catalog.catalog_columns(store, (*VIEW_COLUMNS, "output_key"))
    rows = _rows_of(table, run, store)
    rows = [row for row in rows if all(f.matches(row) for f in filters)]
    for row in rows:
        row["tags"] = dict(row.get("tags") or [])
    rows.sort(key=lambda r: (r["row_id"], _index(r), r["status"]))
    return rows


def catalog_records(
    store: ObjectStore,
    *,
    run: str | None = None,
    latest: bool = True,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """The catalog as one Arrow table (``columns``, default all), selected as the views
    select (see the module docstring): ``run`` one run (``"latest"`` the newest), else with
    ``latest`` the newest run's records of each row id, else every record. Sorted by row
    id, image index, then run id. Columnar throughout: no Python object per row."""
    names = list(columns or catalog.SCHEMA.names)
    wanted = list(dict.fromkeys([*names, "run_id", "row_id", "image_index"]))
    table = catalog.catalog_columns(store, wanted)
    if run == "latest":
        known = pc.max(table["run_id"]).as_py() if table.num_rows else None
        if known is None:
            return table.select(names)
        run = known
    if run is not None:
        table = table.filter(pc.equal(table["run_id"], run))
        if table.num_rows == 0:
            raise ConfigError(f"no run {run!r} in the catalog at {store.root_uri}")
    elif latest and table.num_rows:
        newest = table.group_by("row_id").aggregate([("run_id", "max")])
        keep = pc.is_in(
            pc.binary_join_element_wise(table["row_id"], table["run_id"], "\0"),
            value_set=pc.binary_join_element_wise(newest["row_id"], newest["run_id_max"], "\0"),
        )
        table = table.filter(keep)
    order = [("row_id", "ascending"), ("image_index", "ascending"), ("run_id", "ascending")]
    return table.sort_by(order).select(names)


def _rows_of(table: pa.Table, run: str | None, store: ObjectStore) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = table.to_pylist()
    if run == "latest":
        known = sorted({r["run_id"] for r in rows})
        if not known:
            return []
        run = known[-1]
    if run is not None:
        chosen = [r for r in rows if r["run_id"] == run]
        if not chosen:
            raise ConfigError(f"no run {run!r} in the catalog at {store.root_uri}")
        return chosen
    newest: dict[str, str] = {}
    for row in rows:
        if row["run_id"] > newest.get(row["row_id"], ""):
            newest[row["row_id"]] = row["run_id"]
    return [r for r in rows if r["run_id"] == newest[r["row_id"]]]


def _index(row: dict[str, Any]) -> int:
    index = row.get("image_index")
    return -1 if index is None else int(index)


def has_image(row: dict[str, Any]) -> bool:
    """Whether the row points at a stored output image."""
    stored = row.get("output_key") or row.get("output_uri")
    return bool(stored) and row.get("image_index") is not None


def output_key_of(row: dict[str, Any]) -> str | None:
    """The row's image key under DEST, wherever DEST is now; None without an image.

    The catalog's ``output_key`` column, or for rows written before it, the content-addressed
    key of ``request_key`` and ``image_index`` (the same key: outputs never move inside DEST).
    ``output_uri`` is where the image was when it was stored, absolute, and stale once DEST
    is moved, copied or synced elsewhere.
    """
    if not has_image(row):
        return None
    return row.get("output_key") or output_key(row["request_key"], int(row["image_index"]))


def output_location(store: ObjectStore, row: dict[str, Any]) -> str | None:
    """The URI of the row's image in ``store`` (DEST as it is now), or None without one."""
    key = output_key_of(row)
    return store.uri(key) if key is not None else None


def load_thumbnail(store: ObjectStore, row: dict[str, Any]) -> bytes | None:
    """The row's thumbnail (WebP bytes), made from the output when none was stored.

    None when the row has no image, or neither the thumbnail nor the output can be read.
    """
    image = output_key_of(row)
    if image is None:
        return None
    # A re-rolled row's image (and thumbnail) is its re-roll's: named by its output key.
    key, index = output_of(image, row["request_key"], int(row["image_index"]))
    try:
        small = store.get(thumb_key(key, index))
        # Thumbnails are stored without fsync: one a power failure cut short is made again.
        if small[:4] == b"RIFF" and small[8:12] == b"WEBP" and len(small) > 12:
            return small
    except (StorageError, StorageTransientError):
        pass  # rendered before thumbnails existed, or its upload failed: use the output
    try:
        return images.thumbnail(store.get(image))
    except (StorageError, StorageTransientError, ImageError):
        return None
