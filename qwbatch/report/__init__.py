"""What runs did and cost, read back from the catalog, for a person or for Prefect.

::

    numbers.py         Report: counts, spend, retries, failures and speed (``qwbatch report``)
    html.py            one self-contained HTML page per report (``report --html``)
    links.py           where a page's image links: relative, presigned or public URLs
    page_font.py       the page's embedded subset of Noto Sans CJK
    markdown.py        a run's summary as Markdown, with its contact sheet (Prefect artifact)
    contact_sheet.py   a run's images on one grid, with ids and prompts
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qwbatch.report.contact_sheet import Layout as Layout
    from qwbatch.report.contact_sheet import make_contact_sheet as make_contact_sheet
    from qwbatch.report.html import render_html_report as render_html_report
    from qwbatch.report.markdown import sheet_markdown as sheet_markdown
    from qwbatch.report.numbers import Report as Report
    from qwbatch.report.numbers import cost_table as cost_table
    from qwbatch.report.numbers import report as report
    from qwbatch.report.numbers import run_markdown as run_markdown

#: Each re-exported name → the module that defines it.
_HOME: dict[str, str] = {
    "Layout": "contact_sheet",
    "make_contact_sheet": "contact_sheet",
    "render_html_report": "html",
    "sheet_markdown": "markdown",
    "Report": "numbers",
    "cost_table": "numbers",
    "report": "numbers",
    "run_markdown": "numbers",
}

__all__ = [
    "Layout",
    "Report",
    "cost_table",
    "make_contact_sheet",
    "render_html_report",
    "report",
    "run_markdown",
    "sheet_markdown",
]


def __getattr__(name: str) -> object:
    """A re-exported name, its module imported on first use (PEP 562)."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
