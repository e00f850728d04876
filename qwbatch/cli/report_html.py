"""``qwbatch report DEST --html FILE``: the self-contained HTML report of a destination.

The terminal cost report (``report`` without ``--html``) is built elsewhere; when both exist
they are one command, and this module's part is the ``--html`` branch calling
:func:`qwbatch.report_html.render_html_report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qwbatch.cli import _fail, app
from qwbatch.config import Settings
from qwbatch.errors import QwBatchError


@app.command()
def report(
    dest: Annotated[str, typer.Argument(help="Output folder or s3://bucket/prefix of a run")],
    html: Annotated[
        Path | None, typer.Option("--html", help="Write the HTML report to this file")
    ] = None,
    run: Annotated[
        str | None, typer.Option(help="A run id, or 'latest' (default: latest of every row)")
    ] = None,
    filters: Annotated[
        list[str] | None,
        typer.Option("--filter", help="FIELD=PATTERN, repeatable (as for contact-sheet)"),
    ] = None,
    max_images: Annotated[int, typer.Option(help="Most images to inline", min=0)] = 1000,
) -> None:
    """Report on DEST's renders; --html writes one self-contained page that opens from disk."""
    if html is None:
        _fail("say where to write the report: --html FILE.html")
        return
    from qwbatch.catalog_view import parse_filters
    from qwbatch.report_html import render_html_report
    from qwbatch.storage import open_store

    try:
        store = open_store(dest, Settings())
        page = render_html_report(
            store, run, filters=parse_filters(filters or []), max_images=max_images
        )
        html.write_text(page, encoding="utf-8")
    except QwBatchError as exc:
        _fail(str(exc))
        return
    except OSError as exc:
        _fail(f"cannot write {html}: {exc.strerror}")
        return
    typer.echo(f"report → {html} ({len(page.encode()) // 1024} KiB)")
