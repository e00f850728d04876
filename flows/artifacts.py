"""The Prefect artifacts of a render run: progress as shards finish, then cost and a summary.

The figures come from :mod:`qwbatch.report.numbers` (read back from the run's catalog rows, the
source of truth); this module only hands them to Prefect. Keys are stable across runs, so
the UI's Artifacts page shows each one's history; every artifact is also linked to its run.
"""

from __future__ import annotations

from typing import cast
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from qwbatch.report.markdown import sheet_markdown
from qwbatch.report.numbers import Report, cost_table, run_markdown
from qwbatch.runs.summary import RunSummary

COST_KEY = "qwbatch-cost"
SUMMARY_KEY = "render-summary"
PROGRESS_KEY = "qwbatch-progress"
DIGEST_KEY = "qwbatch-nightly-digest"


class Progress:
    """A progress artifact: the share of the run's shards that have finished."""

    def __init__(self, run_id: str, shards: int) -> None:
        self.run_id = run_id
        self.shards = shards
        self.done = 0
        # Called from the flow's (sync) context, where Prefect's sync-compatible function
        # returns the id itself, not a coroutine.
        self.artifact_id = cast(
            UUID,
            create_progress_artifact(
                progress=100.0 if shards == 0 else 0.0,
                key=PROGRESS_KEY,
                description=self._description(),
            ),
        )

    def _description(self) -> str:
        return f"run {self.run_id}: {self.done} of {self.shards} shards finished"

    def shard_finished(self) -> None:
        self.done += 1
        update_progress_artifact(
            self.artifact_id,
            progress=100.0 * self.done / self.shards,
            description=self._description(),
        )


def publish(summary: RunSummary, report: Report, *, sheet_preview: str | None = None) -> None:
    """The run's cost table (by model and tag) and its Markdown summary with contact sheet."""
    create_table_artifact(
        table=cost_table(report),
        key=COST_KEY,
        description=f"run {summary.run_id}: spend by model and by tag ({summary.currency})",
    )
    create_markdown_artifact(
        markdown=run_markdown(summary, report)
        + "\n"
        + sheet_markdown(summary, sheet_preview=sheet_preview),
        key=SUMMARY_KEY,
        description=f"run {summary.run_id}: rendered, skipped, failed, spend vs budget",
    )


def refused(run_id: str, reason: str) -> None:
    """The Markdown summary of a run its budget refused: why, and that nothing was sent."""
    create_markdown_artifact(
        markdown=f"# qwbatch run `{run_id}`: refused by its budget\n\n{reason}\n",
        key=SUMMARY_KEY,
        description=f"run {run_id}: refused by its budget, nothing sent",
    )


def publish_digest(run_id: str, markdown: str) -> None:
    """A scheduled run's digest (:mod:`qwbatch.report.digest`) as its own Markdown artifact."""
    create_markdown_artifact(
        markdown=markdown,
        key=DIGEST_KEY,
        description=f"run {run_id}: rows new / changed / unchanged, spend, failures",
    )
