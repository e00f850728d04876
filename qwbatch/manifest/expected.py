"""The expected text of a manifest's rows, by id, without checking the rest of each row.

``qwbatch text-check --manifest`` judges images a catalog already holds; it needs only each
row's ``expected_text`` (read as a run reads it: a list, a JSON array, or text split at
``|``), not a plan. Rows without an id or without expected text are left out.
"""

from __future__ import annotations

import os

from qwbatch.core.settings import Settings
from qwbatch.manifest.columns import COERCE
from qwbatch.manifest.files import manifest_files
from qwbatch.manifest.schema import open_parquet


def expected_texts(
    location: str | os.PathLike[str], *, settings: Settings | None = None
) -> dict[str, tuple[str, ...]]:
    """Row id → its expected strings, for every row of the manifest at ``location`` that
    has any (a later row with the same id wins)."""
    found: dict[str, tuple[str, ...]] = {}
    for file in manifest_files(location, settings=settings):
        parquet = open_parquet(file)
        if "expected_text" not in parquet.schema_arrow.names:
            continue
        for batch in parquet.iter_batches(columns=["id", "expected_text"]):
            ids = COERCE["id"](batch.column("id"))
            texts = COERCE["expected_text"](batch.column("expected_text"))
            for row_id, text in zip(ids, texts, strict=True):
                if isinstance(row_id, str) and isinstance(text, tuple) and text:
                    found[row_id] = text
    return found
