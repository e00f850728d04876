"""What a run has already spent, read from the catalog (in the run's currency).

A billed call is counted as ``cost``, a call that may have been billed as ``possible_cost``;
both count as spent, so a rerun of a run id never spends the same budget twice.
"""

from __future__ import annotations

import io
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qwbatch.catalog.table import catalog_columns
from qwbatch.core.costs import MONEY_PLACES, ZERO
from qwbatch.core.errors import ObjectNotFoundError
from qwbatch.storage.base import ObjectStore


def spent_by_run(store: ObjectStore, run_id: str) -> Decimal:
    """What the catalog records as billed under ``run_id`` (cost plus possible cost)."""
    rows = catalog_columns(store, ("run_id", "cost", "possible_cost"), run_id=run_id)
    return round(_spend(rows), MONEY_PLACES)


def spent_in_part(store: ObjectStore, key: str) -> Decimal:
    """What one catalog part at ``key`` records as billed; zero when there is no such part."""
    try:
        table = pq.read_table(io.BytesIO(store.get(key)), columns=["cost", "possible_cost"])
    except ObjectNotFoundError:
        return ZERO
    return _spend(table)


def _spend(table: pa.Table) -> Decimal:
    total = ZERO
    for column in ("cost", "possible_cost"):
        total += Decimal(str(pc.sum(table[column]).as_py() or 0.0))
    return total
