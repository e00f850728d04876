"""A run's summary as Markdown, with its contact sheet: what the flow publishes to Prefect.

The Prefect UI shows a Markdown artifact but cannot open a file in DEST (a ``file://`` link
from a web page is blocked; an ``s3://`` one is not a web address). So the full-size sheet is
stored in DEST (``runs/<run_id>/contact-sheet.png``, named in the text), and the artifact
embeds a small JPEG preview of it as a ``data:`` URI, which the UI renders inline. A preview
larger than :data:`MAX_PREVIEW_BYTES` is left out (the link remains) to keep Prefect's
database lean.
"""

from __future__ import annotations

from qwbatch.runs.summary import RunSummary

#: Largest data URI embedded in an artifact, in bytes (the preview of a 120-tile sheet at
#: 900 pixels wide is well under this).
MAX_PREVIEW_BYTES = 400_000


def sheet_markdown(summary: RunSummary, *, sheet_preview: str | None = None) -> str:
    """The run summary's contact sheet section: its preview inline, and where the sheet is."""
    lines: list[str] = []
    if summary.contact_sheet_uri is not None:
        lines += ["## Contact sheet", ""]
        if sheet_preview is not None and len(sheet_preview) <= MAX_PREVIEW_BYTES:
            lines += [f"![contact sheet of run {summary.run_id}]({sheet_preview})", ""]
        lines.append(f"Full size: `{summary.contact_sheet_uri}`")
    return "\n".join(lines) + "\n"
