"""``qwbatch text-check DEST``: read the images of an existing catalog again; pay nothing.

After an OCR engine change, or for rows rendered before text checks existed, every catalog
row with a stored image and expected text is read again (:class:`qwbatch.text.TextReader`)
and judged; its ``text_*`` columns are rewritten, and its status moves between
``succeeded``/``deduplicated`` and ``text_mismatch`` with the verdict. No provider is
called: nothing is re-rolled. The expected text is the catalog's own (``text_expected``),
or, with a manifest, that manifest's ``expected_text`` by row id (which wins).

Each catalog part holding a changed row is rewritten whole, in one write, under its own
name, so a reader sees the old part or the new one. Run it while no run writes to DEST.

::

    result = text_check(store, expected={"poster-1": ("SALE",)}, max_cer=0.0)
    result.checked, result.passed, result.changed_parts
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from qwbatch.catalog import table as catalog
from qwbatch.core.errors import ImageError, TextReadError
from qwbatch.storage.layout import output_key, output_of
from qwbatch.storage.stores import ObjectStore
from qwbatch.text import TextReader, judge

#: Statuses of rows whose image is stored and can be judged again.
_JUDGED = frozenset({"succeeded", "deduplicated", "text_mismatch"})


@dataclass(slots=True)
class TextCheckResult:
    """What a text check did: images read and how they fared, parts rewritten."""

    checked: int = 0
    passed: int = 0
    failed: int = 0
    unread: int = 0
    #: Rows whose status changed (succeeded ↔ text_mismatch).
    changed_status: int = 0
    changed_parts: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"text-check: {self.checked} images read, {self.passed} right, {self.failed} "
            f"misspelt, {self.unread} unreadable; {self.changed_status} statuses changed, "
            f"{len(self.changed_parts)} catalog parts rewritten; nothing was rendered"
        )


def text_check(
    store: ObjectStore,
    *,
    expected: Mapping[str, Sequence[str]] | None = None,
    run_id: str | None = None,
    max_cer: float = 0.0,
    workers: int | None = None,
) -> TextCheckResult:
    """Judge the text of every stored image of ``store``'s catalog (rows of ``run_id`` only,
    when given) against ``expected`` (row id → strings) or the catalog's ``text_expected``."""
    return asyncio.run(
        _check(store, expected=expected or {}, run_id=run_id, max_cer=max_cer, workers=workers)
    )


async def _check(
    store: ObjectStore,
    *,
    expected: Mapping[str, Sequence[str]],
    run_id: str | None,
    max_cer: float,
    workers: int | None,
) -> TextCheckResult:
    result = TextCheckResult()
    async with TextReader(workers=workers) as reader:
        for key in catalog.part_keys(store):
            table = await asyncio.to_thread(catalog.read_part, store, key)
            rows = table.to_pylist()
            picked = [(i, row) for i, row in enumerate(rows) if _wanted(row, expected, run_id)]
            if not picked:
                continue
            judged = await asyncio.gather(
                *(_judge(store, reader, row, expected, max_cer, result) for _, row in picked)
            )
            for (i, _), row in zip(picked, judged, strict=True):
                rows[i] = row
            updated = pa.Table.from_pylist(rows, schema=catalog.SCHEMA)
            await asyncio.to_thread(catalog.rewrite_part, store, key, updated)
            result.changed_parts.append(store.uri(key))
    return result


def _wanted(row: dict[str, Any], expected: Mapping[str, Sequence[str]], run_id: str | None) -> bool:
    if run_id is not None and row["run_id"] != run_id:
        return False
    if row["status"] not in _JUDGED or not (row.get("output_key") or row.get("output_uri")):
        return False
    return bool(expected.get(row["row_id"]) or row.get("text_expected"))


async def _judge(
    store: ObjectStore,
    reader: TextReader,
    row: dict[str, Any],
    expected: Mapping[str, Sequence[str]],
    max_cer: float,
    result: TextCheckResult,
) -> dict[str, Any]:
    wanted = tuple(expected.get(row["row_id"]) or row.get("text_expected") or ())
    stored = row.get("output_key") or row.get("output_uri")
    key, index = output_of(stored, row["request_key"], row["image_index"] or 0)
    row = dict(row, text_expected=list(wanted))
    before = row["status"]
    result.checked += 1
    try:
        found = await reader.read(await asyncio.to_thread(store.get, output_key(key, index)))
    except (TextReadError, ImageError) as exc:
        result.unread += 1
        row.update(text_found=None, text_cer=None, text_ok=None, status="text_mismatch")
        row.update(error_code="TextReadError", error_message=exc.message)
    else:
        verdict = judge(wanted, found, max_cer=max_cer)
        row.update(text_found=verdict.found, text_cer=verdict.cer, text_ok=verdict.ok)
        if verdict.ok:
            result.passed += 1
            if before == "text_mismatch":
                # Kept by a run as its best attempt; it reads right now. It was paid for.
                row.update(status="succeeded", error_code=None, error_message=None)
        else:
            result.failed += 1
            row.update(
                status="text_mismatch",
                error_code="TextMismatch",
                error_message=f"text read with CER {verdict.cer:.3f} > {max_cer:g} (text-check)",
            )
    result.changed_status += row["status"] != before
    row["rerolls"] = row.get("rerolls") or 0
    return row
