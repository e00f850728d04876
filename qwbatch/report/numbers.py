"""What runs did and cost, read back from the catalog: the numbers behind ``qwbatch report``.

Every figure is a plain aggregate over catalog rows (one row per output image, or per request
that ended without one), so a DuckDB or polars query over ``DEST/catalog/*.parquet`` gives
the same numbers:

- ``statuses``: rows by status; ``images``: rows with status ``succeeded``;
- spend (``cost``, ``possible_cost``) by model, by tag and by run, in each row's currency; a
  row counts under each of its tags (as ``key=value``, or ``(untagged)``), so tag lines can
  add up to more than the total;
- ``calls``: per request (run id, request key) the largest ``attempts`` of its rows, summed;
  ``retries`` the same less one call per request that made any;
- ``failures``: rows with status ``failed``, ``moderated``, ``ambiguous``, ``expired`` or
  ``text_mismatch``, by
  status and ``error_code`` (the provider's code, or our error class);
- ``text``: images whose row expected text (``text_expected``), how many read right
  (``text_ok``), how many ended ``text_mismatch``, how many could not be read, and the
  re-rolls they took (``rerolls``, each billed and in ``cost``);
- wall time of a run: its first ``started_at`` to its last ``finished_at`` (plan rows
  included), and throughput: images stored per minute of it;
- ``spend``: the selected run's spend beside the lifetime spend of DEST, as
  :mod:`qwbatch.catalog.spend` defines both (the same figures every other view shows).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qwbatch.catalog import table as catalog
from qwbatch.catalog.spend import Spend, money_text, spend
from qwbatch.catalog.table import catalog_columns
from qwbatch.core.costs import MONEY_PLACES, UNTAGGED, format_money, tag_label
from qwbatch.core.errors import ConfigError
from qwbatch.storage import layout
from qwbatch.storage.stores import ObjectStore

if TYPE_CHECKING:
    from qwbatch.runs.summary import RunSummary

#: Statuses that mean a request ended without its image, for a reason worth reading.
FAILURE_STATUSES = ("failed", "moderated", "ambiguous", "expired", "text_mismatch")

REPORT_COLUMNS = (
    "run_id",
    "request_key",
    "model",
    "status",
    "error_code",
    "attempts",
    "cost",
    "possible_cost",
    "currency",
    "started_at",
    "finished_at",
    "tags",
    "text_expected",
    "text_ok",
    "rerolls",
)


def _money(value: float) -> float:
    return round(value, MONEY_PLACES)


@dataclass(slots=True)
class SpendLine:
    """Images stored and money spent under one heading, in one currency."""

    name: str
    currency: str
    rows: int = 0
    images: int = 0
    cost: float = 0.0
    possible_cost: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "currency": self.currency,
            "rows": self.rows,
            "images": self.images,
            "cost": _money(self.cost),
            "possible_cost": _money(self.possible_cost),
        }


@dataclass(slots=True)
class RunLine:
    """One run: its spend, and how long it took from first to last catalog row."""

    run_id: str
    currency: str
    rows: int = 0
    images: int = 0
    cost: float = 0.0
    possible_cost: float = 0.0
    calls: int = 0
    retries: int = 0
    started_at: float | None = None  # POSIX seconds
    finished_at: float | None = None

    @property
    def wall_s(self) -> float:
        if self.started_at is None or self.finished_at is None:
            return 0.0
        return max(self.finished_at - self.started_at, 0.0)

    @property
    def images_per_minute(self) -> float:
        return self.images * 60.0 / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "currency": self.currency,
            "rows": self.rows,
            "images": self.images,
            "cost": _money(self.cost),
            "possible_cost": _money(self.possible_cost),
            "calls": self.calls,
            "retries": self.retries,
            "wall_s": round(self.wall_s, 3),
            "images_per_minute": round(self.images_per_minute, 3),
        }


@dataclass(slots=True)
class TextCounts:
    """Text checks over the rows of a report: images checked, passed, failed, re-rolls."""

    checked: int = 0
    passed: int = 0
    mismatched: int = 0
    #: Checked images whose text could not be read at all (a worker died).
    unread: int = 0
    rerolls: int = 0

    def add(self, row: dict[str, Any]) -> None:
        if not row.get("text_expected"):
            return
        self.checked += 1
        self.passed += row.get("text_ok") is True
        self.mismatched += row["status"] == "text_mismatch"
        self.unread += row.get("text_ok") is None
        self.rerolls += row.get("rerolls") or 0

    def to_dict(self) -> dict[str, int]:
        return {
            "checked": self.checked,
            "passed": self.passed,
            "mismatched": self.mismatched,
            "unread": self.unread,
            "rerolls": self.rerolls,
        }


@dataclass(slots=True)
class Report:
    """Counts, spend, retries, failures and speed of the runs in a catalog (see module doc)."""

    runs: list[RunLine] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    rows: int = 0
    requests: int = 0
    images: int = 0
    calls: int = 0
    retries: int = 0
    cost: dict[str, float] = field(default_factory=dict)
    possible_cost: dict[str, float] = field(default_factory=dict)
    by_model: list[SpendLine] = field(default_factory=list)
    by_tag: list[SpendLine] = field(default_factory=list)
    failures: dict[str, dict[str, int]] = field(default_factory=dict)
    text: TextCounts = field(default_factory=TextCounts)
    #: The selected run's spend and the lifetime spend (None: built from rows alone).
    spend: Spend | None = None

    @property
    def wall_s(self) -> float:
        """Seconds the runs took, each from its first row to its last, added up."""
        return sum(run.wall_s for run in self.runs)

    @property
    def images_per_minute(self) -> float:
        return self.images * 60.0 / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": [run.to_dict() for run in self.runs],
            "rows": self.rows,
            "requests": self.requests,
            "images": self.images,
            "statuses": self.statuses,
            "cost": {c: _money(v) for c, v in self.cost.items()},
            "possible_cost": {c: _money(v) for c, v in self.possible_cost.items()},
            "calls": self.calls,
            "retries": self.retries,
            "wall_s": round(self.wall_s, 3),
            "images_per_minute": round(self.images_per_minute, 3),
            "by_model": [line.to_dict() for line in self.by_model],
            "by_tag": [line.to_dict() for line in self.by_tag],
            "failures": self.failures,
            "text": self.text.to_dict(),
            "spend": self.spend.to_dict() if self.spend is not None else None,
        }


def _spend(lines: dict[tuple[str, str], SpendLine], name: str, row: dict[str, Any]) -> None:
    currency = row["currency"] or ""
    line = lines.setdefault((name, currency), SpendLine(name, currency))
    line.rows += 1
    line.images += row["status"] == "succeeded"
    line.cost += row["cost"] or 0.0
    line.possible_cost += row["possible_cost"] or 0.0


def _seconds(value: Any) -> float | None:
    return value.timestamp() if value is not None else None


def build_report(rows: Iterable[dict[str, Any]]) -> Report:
    """A report of catalog ``rows`` (dicts with at least :data:`REPORT_COLUMNS`)."""
    report = Report()
    statuses: Counter[str] = Counter()
    by_model: dict[tuple[str, str], SpendLine] = {}
    by_tag: dict[tuple[str, str], SpendLine] = {}
    runs: dict[str, RunLine] = {}
    attempts: dict[tuple[str, str], int] = {}
    for row in rows:
        report.rows += 1
        status = row["status"]
        statuses[status] += 1
        currency = row["currency"] or ""
        cost, possible = row["cost"] or 0.0, row["possible_cost"] or 0.0
        report.images += status == "succeeded"
        report.cost[currency] = report.cost.get(currency, 0.0) + cost
        report.possible_cost[currency] = report.possible_cost.get(currency, 0.0) + possible
        _spend(by_model, row["model"], row)
        for label in [tag_label(k, v) for k, v in row["tags"] or []] or [UNTAGGED]:
            _spend(by_tag, label, row)
        run = runs.setdefault(row["run_id"], RunLine(row["run_id"], currency))
        run.rows += 1
        run.images += status == "succeeded"
        run.cost += cost
        run.possible_cost += possible
        started, finished = _seconds(row["started_at"]), _seconds(row["finished_at"])
        if started is not None and (run.started_at is None or started < run.started_at):
            run.started_at = started
        if finished is not None and (run.finished_at is None or finished > run.finished_at):
            run.finished_at = finished
        report.text.add(row)
        key = (row["run_id"], row["request_key"])
        attempts[key] = max(attempts.get(key, 0), row["attempts"] or 0)
        if status in FAILURE_STATUSES:
            codes = report.failures.setdefault(status, {})
            code = row["error_code"] or "(none)"
            codes[code] = codes.get(code, 0) + 1
    for (run_id, _), calls in attempts.items():
        runs[run_id].calls += calls
        runs[run_id].retries += max(calls - 1, 0)
    report.requests = len(attempts)
    report.calls = sum(run.calls for run in runs.values())
    report.retries = sum(run.retries for run in runs.values())
    report.statuses = dict(sorted(statuses.items()))
    report.runs = sorted(runs.values(), key=lambda r: r.run_id)
    report.by_model = sorted(by_model.values(), key=lambda line: (line.name, line.currency))
    report.by_tag = sorted(by_tag.values(), key=lambda line: (line.name, line.currency))
    report.failures = {s: dict(sorted(c.items())) for s, c in sorted(report.failures.items())}
    return report


def report(store: ObjectStore, *, run_id: str | None = None, missing_ok: bool = False) -> Report:
    """The report of ``store``'s catalog, or of one run in it.

    A store without a catalog, or a run with no rows, is a ConfigError (naming the latest
    runs), unless ``missing_ok``.
    """
    if not missing_ok:
        require_catalog(store)
    table = catalog_columns(store, REPORT_COLUMNS, run_id=run_id)
    if run_id is not None and table.num_rows == 0 and not missing_ok:
        runs = sorted(set(catalog_columns(store, ("run_id",))["run_id"].to_pylist()))
        known = ", ".join(runs[-10:]) or "none"
        raise ConfigError(f"the catalog has no rows for run {run_id!r} (latest runs: {known})")
    result = build_report(row for batch in table.to_batches() for row in batch.to_pylist())
    result.spend = spend(store, run_id)
    return result


def require_catalog(store: ObjectStore) -> None:
    """ConfigError unless ``store`` is a DEST with a catalog: a report of anything else
    would be an empty page that looks like a run that rendered nothing."""
    if not catalog.part_keys(store):
        where = store.uri(layout.CATALOG_PREFIX.rstrip("/"))
        raise ConfigError(
            f"no catalog at {where}: nothing has been rendered there (is it a run's --out?)"
        )


# --------------------------------------------------------------------------- run artifacts


def cost_table(report: Report) -> list[dict[str, Any]]:
    """Spend by model, then by tag, then the run's and the lifetime's, as table rows (for the
    run's Prefect table artifact)."""
    lines = [
        {
            "by": by,
            "name": line.name,
            "images": line.images,
            "rows": line.rows,
            "cost": _money(line.cost),
            "possible_cost": _money(line.possible_cost),
            "currency": line.currency,
        }
        for by, group in (("model", report.by_model), ("tag", report.by_tag))
        for line in group
    ]
    if report.spend is not None:
        money = report.spend
        totals = (
            ("run", money.run_id or "", money.run_cost, money.run_possible_cost),
            ("lifetime", f"{money.runs} runs", money.lifetime_cost, money.lifetime_possible_cost),
        )
        lines += [
            {
                "by": by,
                "name": name,
                "images": None,
                "rows": None,
                "cost": _money(amount),
                "possible_cost": _money(possible.get(currency, 0.0)),
                "currency": currency,
            }
            for by, name, costs, possible in totals
            for currency, amount in sorted(costs.items())
        ]
    return lines


def run_markdown(summary: RunSummary, report: Report) -> str:
    """A run's summary in Markdown: what was rendered, skipped and failed, and spend vs budget."""
    money = summary.currency
    lines = [
        f"# qwbatch run `{summary.run_id}`",
        "",
        f"Output: `{summary.out}`",
        "",
        "| | |",
        "|---|---:|",
        f"| manifest rows read | {summary.rows_read} |",
        f"| rejected (see the rejects file) | {summary.rejected} |",
        f"| already rendered (deduplicated) | {summary.deduplicated} |",
        f"| duplicate rows folded | {summary.folded} |",
        f"| requests sent to render | {summary.requests} in {summary.shards} shards |",
        f"| images stored | {summary.images_stored} |",
        f"| skipped by the budget | {summary.skipped_budget} rows |",
        f"| estimated cost | {format_money(summary.estimated_cost, money)} |",
        f"| billed | {summary.billed_images} images, {format_money(summary.cost, money)} |",
        f"| possible extra spend (ambiguous calls) | "
        f"{format_money(summary.possible_extra_cost, money)} |",
    ]
    if summary.budget is not None:
        used = summary.cost + summary.possible_extra_cost
        share = f"{100 * used / summary.budget:.1f} %" if summary.budget else "-"
        lines.append(
            f"| budget ({summary.budget_mode}) | {format_money(summary.budget, money)}: "
            f"{share} used |"
        )
    if report.spend is not None:
        lines.append(
            f"| lifetime spend in DEST ({report.spend.runs} runs) | "
            f"{money_text(report.spend.lifetime_cost, money)} |"
        )
    lines += [f"| wall time | {summary.wall_s:.1f} s |", ""]
    statuses = ", ".join(f"{k} {v}" for k, v in summary.statuses.items()) or "none"
    lines += [f"Request outcomes: {statuses}.", ""]
    if report.failures:
        lines += ["## Failed, and why", "", "| status | error | rows |", "|---|---|---:|"]
        for status, codes in report.failures.items():
            lines += [f"| {status} | `{code}` | {count} |" for code, count in codes.items()]
        lines.append("")
    else:
        lines += ["Nothing failed.", ""]
    if summary.skipped_budget:
        lines += [
            f"{summary.skipped_budget} rows were not rendered because the budget would have "
            "been passed; they are in the catalog with status `skipped_budget`.",
            "",
        ]
    return "\n".join(lines)
