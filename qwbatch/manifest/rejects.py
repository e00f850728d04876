"""Rejects: a refused manifest row and why (:class:`Reject`), and the rejects file's table.

A bad row gets a ``Reject`` and the good rows go on; a plan writes a run's rejects beside
the catalog as Parquet (``REJECTS_SCHEMA``, through :func:`rejects_table`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import pyarrow as pa

#: Columns of a rejects file.
REJECTS_SCHEMA: Final = pa.schema(
    [
        pa.field("row_number", pa.int64(), nullable=False),
        pa.field("id", pa.string()),
        pa.field("column", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True, slots=True)
class Reject:
    """One refused manifest row: where (0-based row number, id, column) and why."""

    row_number: int
    row_id: str | None
    column: str
    reason: str

    def __str__(self) -> str:
        return f"row {self.row_number} (id {self.row_id!r}), column {self.column!r}: {self.reason}"


def rejects_table(rejects: Iterable[Reject]) -> pa.Table:
    """The rejects as an Arrow table (``REJECTS_SCHEMA``), ready for ``pyarrow.parquet``."""
    rows = list(rejects)
    return pa.table(
        {
            "row_number": pa.array([r.row_number for r in rows], pa.int64()),
            "id": pa.array([r.row_id for r in rows], pa.string()),
            "column": pa.array([r.column for r in rows], pa.string()),
            "reason": pa.array([r.reason for r in rows], pa.string()),
        },
        schema=REJECTS_SCHEMA,
    )
