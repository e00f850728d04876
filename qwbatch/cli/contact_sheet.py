"""``qwbatch contact-sheet``: a grid of a destination's thumbnails with ids and prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qwbatch.cli.app import _fail, app
from qwbatch.core.errors import QwBatchError
from qwbatch.core.settings import Settings


@app.command("contact-sheet")
def contact_sheet(
    dest: Annotated[str, typer.Argument(help="Output folder or s3://bucket/prefix of a run")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write")],
    run: Annotated[
        str | None, typer.Option(help="A run id, or 'latest' (default: latest of every row)")
    ] = None,
    filters: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            help="FIELD=PATTERN or FIELD!=PATTERN, repeatable: status=succeeded, "
            "model=qwen-image-2.0, id=poster-*, tag.campaign=autumn*",
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="Most tiles to draw", min=1)] = 500,
    columns: Annotated[int, typer.Option(help="Tiles per row", min=1)] = 6,
    tile: Annotated[int, typer.Option(help="Tile size in pixels", min=64, max=1024)] = 200,
    title: Annotated[str | None, typer.Option(help="Heading (default: DEST and run)")] = None,
    approved_only: Annotated[
        bool, typer.Option(help="Only images a review approved (qwbatch review)")
    ] = False,
) -> None:
    """Draw DEST's images on one PNG grid, each with its id and a short prompt."""
    from qwbatch.catalog.view import parse_filters
    from qwbatch.report.contact_sheet import Layout, make_contact_sheet
    from qwbatch.storage.stores import open_store

    try:
        store = open_store(dest, Settings())
        sheet = make_contact_sheet(
            store,
            run=run,
            filters=parse_filters(filters or []),
            limit=limit,
            layout=Layout(columns=columns, tile=tile),
            title=title,
            approved_only=approved_only,
        )
        out.write_bytes(sheet.png())
    except QwBatchError as exc:
        _fail(str(exc))
        return
    except OSError as exc:
        _fail(f"cannot write {out}: {exc.strerror}")
        return
    more = f" ({sheet.matched - sheet.shown} more not drawn)" if sheet.matched > sheet.shown else ""
    typer.echo(f"{sheet.shown} tiles{more} → {out}")
