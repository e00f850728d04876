"""Spend, defined once: what a run paid, what DEST has paid in its lifetime, and what each
image cost in the run that rendered it.

Every view of money (the HTML page, ``qwbatch report`` and its ``--json``, the contact sheet
header, the run summary and the Prefect artifacts) reads these figures, so they agree:

- **a run's spend**: the sum of ``cost`` over that run's catalog rows (``possible_cost``
  apart: calls whose answer was lost and may have been billed);
- **lifetime spend**: the same sums over every row of the catalog, all runs;
- **an image's cost**: the ``cost`` of the ``succeeded`` row that stored it, in the run that
  rendered it. A ``deduplicated`` row costs its run nothing, but it shows an image somebody
  paid for: :func:`origins` finds that row, so a page of reruns still says what its images
  cost, and who paid.

Each figure is a plain aggregate, so DuckDB over ``DEST/catalog/*.parquet`` gives the same::

    select sum(cost) from cat                          -- lifetime
    select sum(cost) from cat where run_id = 'RUN'     -- a run's spend

Amounts are in the catalog's currency (a dict by currency where a catalog could mix them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qwbatch.catalog.table import catalog_columns
from qwbatch.core.costs import MONEY_PLACES, format_money
from qwbatch.storage.stores import ObjectStore

SPEND_COLUMNS = ("run_id", "cost", "possible_cost", "currency")
_ORIGIN_COLUMNS = ("run_id", "request_key", "image_index", "status", "cost", "currency")


def _add(amounts: dict[str, float], currency: str, value: float) -> None:
    amounts[currency] = amounts.get(currency, 0.0) + value


def money_text(amounts: Mapping[str, float], currency: str = "USD") -> str:
    """``1.2000 USD`` (or ``1.2000 USD, 3.0000 CNY`` for a mixed catalog); zero when empty."""
    if not amounts:
        return format_money(0.0, currency)
    return ", ".join(format_money(v, c) for c, v in sorted(amounts.items()))


@dataclass(slots=True)
class Spend:
    """A run's spend beside the lifetime spend of its DEST (see the module docstring).

    ``run_id`` None: no run is selected (``run_cost`` is then the lifetime's).
    """

    run_id: str | None
    runs: int = 0
    run_cost: dict[str, float] = field(default_factory=dict)
    run_possible_cost: dict[str, float] = field(default_factory=dict)
    lifetime_cost: dict[str, float] = field(default_factory=dict)
    lifetime_possible_cost: dict[str, float] = field(default_factory=dict)

    def line(self, currency: str = "USD") -> str:
        """``run R spent 0.0000 USD · lifetime 1.2000 USD over 2 runs`` (+ possible extra)."""
        lifetime = (
            f"lifetime {money_text(self.lifetime_cost, currency)} over {self.runs} "
            f"run{'s' if self.runs != 1 else ''}"
        )
        if any(self.lifetime_possible_cost.values()):
            lifetime += f" (+ {money_text(self.lifetime_possible_cost, currency)} possible)"
        if self.run_id is None:
            return lifetime
        return f"run {self.run_id} spent {money_text(self.run_cost, currency)} · {lifetime}"

    def to_dict(self) -> dict[str, Any]:
        def rounded(amounts: dict[str, float]) -> dict[str, float]:
            return {c: round(v, MONEY_PLACES) for c, v in sorted(amounts.items())}

        return {
            "run_id": self.run_id,
            "runs": self.runs,
            "run_cost": rounded(self.run_cost),
            "run_possible_cost": rounded(self.run_possible_cost),
            "lifetime_cost": rounded(self.lifetime_cost),
            "lifetime_possible_cost": rounded(self.lifetime_possible_cost),
        }


def spend_of_rows(rows: Iterable[Mapping[str, Any]], run_id: str | None) -> Spend:
    """The spend of ``run_id`` and the lifetime's, from catalog rows (:data:`SPEND_COLUMNS`)."""
    spend = Spend(run_id=run_id)
    runs: set[str] = set()
    for row in rows:
        currency = row["currency"] or ""
        cost, possible = row["cost"] or 0.0, row["possible_cost"] or 0.0
        runs.add(row["run_id"])
        _add(spend.lifetime_cost, currency, cost)
        _add(spend.lifetime_possible_cost, currency, possible)
        if run_id is None or row["run_id"] == run_id:
            _add(spend.run_cost, currency, cost)
            _add(spend.run_possible_cost, currency, possible)
    spend.runs = len(runs)
    return spend


def spend(store: ObjectStore, run_id: str | None = None) -> Spend:
    """The spend of ``store``'s run ``run_id`` (None: no run) beside its lifetime spend."""
    table = catalog_columns(store, SPEND_COLUMNS)
    return spend_of_rows(table.to_pylist(), run_id)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an image was rendered: the run, and what that run paid for it."""

    run_id: str
    cost: float
    currency: str


def origins(store: ObjectStore) -> dict[tuple[str, int], list[Origin]]:
    """(request key, image index) → the ``succeeded`` rows that stored it, oldest run first.

    Usually one; a request rendered again after its output was lost has several.
    """
    table = catalog_columns(store, _ORIGIN_COLUMNS)
    found: dict[tuple[str, int], list[Origin]] = {}
    for row in table.to_pylist():
        if row["status"] != "succeeded" or row["image_index"] is None:
            continue
        origin = Origin(row["run_id"], row["cost"] or 0.0, row["currency"] or "")
        found.setdefault((row["request_key"], row["image_index"]), []).append(origin)
    for rendered in found.values():
        rendered.sort(key=lambda origin: origin.run_id)
    return found


def origin_of(row: Mapping[str, Any], found: Mapping[tuple[str, int], list[Origin]]) -> Origin:
    """The run that rendered ``row``'s image and its cost there.

    A ``succeeded`` row is its own origin; a ``deduplicated`` one the newest rendering no
    later than its run; a row without an image (or whose origin is gone) is its own, at its
    own cost.
    """
    own = Origin(row["run_id"], row.get("cost") or 0.0, row.get("currency") or "")
    if row["status"] != "deduplicated" or row.get("image_index") is None:
        return own
    rendered = found.get((row["request_key"], row["image_index"]), [])
    earlier = [origin for origin in rendered if origin.run_id <= row["run_id"]]
    return (earlier or rendered or [own])[-1]
