"""The catalog: a Parquet dataset under ``DEST/catalog/``, one row per output image.

::

    table.py     SCHEMA, catalog parts (one per shard of a run; their keys: storage.layout)
    key_set.py   the request keys that already have outputs, compactly, for the plan's dedup
    view.py      the rows a person looks at: one run, or the latest of every row, filtered
    spend.py     spend, defined once: a run's, the lifetime's, and each image's where rendered
    review.py    review decisions (approve / reject each image), beside the catalog
    rebuild.py   the catalog rebuilt from the store, each image's metadata describing it

The columns are listed in docs/outputs-and-catalog.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qwbatch.catalog.key_set import short_key as short_key
    from qwbatch.catalog.spend import Spend as Spend
    from qwbatch.catalog.table import ExistingImage as ExistingImage
    from qwbatch.catalog.table import catalog_columns as catalog_columns
    from qwbatch.catalog.table import part_keys as part_keys
    from qwbatch.catalog.view import RowFilter as RowFilter
    from qwbatch.catalog.view import parse_filters as parse_filters

#: Each re-exported name → the module that defines it.
_HOME: dict[str, str] = {
    "short_key": "key_set",
    "Spend": "spend",
    "ExistingImage": "table",
    "catalog_columns": "table",
    "part_keys": "table",
    "RowFilter": "view",
    "parse_filters": "view",
}

__all__ = [
    "ExistingImage",
    "RowFilter",
    "Spend",
    "catalog_columns",
    "parse_filters",
    "part_keys",
    "short_key",
]


def __getattr__(name: str) -> object:
    """A re-exported name, its module imported on first use (PEP 562)."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
