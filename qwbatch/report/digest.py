"""A scheduled run's digest: what changed since the runs before it, what it spent, what failed.

The nightly deployment ends each run with this short Markdown (a Prefect artifact), so the
morning's question, "what did last night do?", has a one-screen answer. Rows are manifest
row ids of the run, compared with every earlier run in DEST's catalog:

- **new**: the row id was never rendered before;
- **changed**: it was, but asks for another request now (prompt, size, seed… changed);
- **unchanged**: every request it asks for was recorded before under the same row id.

Spend is :mod:`qwbatch.catalog.spend`'s (the run's, beside the lifetime's); failures are rows
with a failure status, each with its error class and message; rows a budget skipped are
counted apart (the user's ceiling, not a failure).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qwbatch.catalog import spend as catalog_spend
from qwbatch.catalog.table import catalog_columns
from qwbatch.report.numbers import FAILURE_STATUSES
from qwbatch.storage.stores import ObjectStore

_COLUMNS = ("run_id", "row_id", "request_key", "status", "error_code", "error_message")
#: Failures listed by name at most; the digest counts the rest.
MAX_FAILURES_LISTED = 20


@dataclass(frozen=True, slots=True)
class FailedRow:
    row_id: str
    status: str
    error_code: str
    message: str


@dataclass(slots=True)
class Digest:
    """One run's rows new / changed / unchanged, its spend, and its failures."""

    run_id: str
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    skipped_budget: int = 0
    failures: list[FailedRow] = field(default_factory=list)
    spend: catalog_spend.Spend | None = None


def digest(store: ObjectStore, run_id: str) -> Digest:
    """The digest of run ``run_id`` in ``store``'s catalog (see the module docstring)."""
    rows = catalog_columns(store, _COLUMNS).to_pylist()
    before: dict[str, set[str]] = {}
    now: dict[str, set[str]] = {}
    result = Digest(run_id=run_id, spend=catalog_spend.spend(store, run_id))
    skipped: set[str] = set()
    for row in rows:
        if row["run_id"] < run_id:
            before.setdefault(row["row_id"], set()).add(row["request_key"])
        elif row["run_id"] == run_id:
            now.setdefault(row["row_id"], set()).add(row["request_key"])
            if row["status"] == "skipped_budget":
                skipped.add(row["row_id"])
            elif row["status"] in FAILURE_STATUSES:
                result.failures.append(
                    FailedRow(
                        row["row_id"],
                        row["status"],
                        row["error_code"] or "(none)",
                        row["error_message"] or "",
                    )
                )
    for row_id, keys in now.items():
        if row_id not in before:
            result.new += 1
        elif keys <= before[row_id]:
            result.unchanged += 1
        else:
            result.changed += 1
    result.skipped_budget = len(skipped)
    result.failures.sort(key=lambda failed: failed.row_id)
    return result


def digest_markdown(found: Digest, *, currency: str = "USD") -> str:
    """The digest as short Markdown: counts, spend, then the failures with their reasons."""
    money = found.spend.line(currency) if found.spend is not None else "unknown"
    lines = [
        f"# qwbatch nightly `{found.run_id}`",
        "",
        f"Rows: **{found.new} new**, **{found.changed} changed**, {found.unchanged} unchanged"
        + (f", {found.skipped_budget} skipped by the budget" if found.skipped_budget else "")
        + ".",
        "",
        f"Spend: {money}.",
        "",
    ]
    if not found.failures:
        return "\n".join([*lines, "Nothing failed."]) + "\n"
    lines += [f"## Failed ({len(found.failures)})", "", "| row | status | error | reason |"]
    lines.append("|---|---|---|---|")
    for failed in found.failures[:MAX_FAILURES_LISTED]:
        reason = failed.message.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{failed.row_id}` | {failed.status} | `{failed.error_code}` | {reason} |")
    more = len(found.failures) - MAX_FAILURES_LISTED
    if more > 0:
        lines += ["", f"… and {more} more: `qwbatch report DEST --run {found.run_id}`."]
    return "\n".join(lines) + "\n"
