"""``qwbatch catalog …``: look after a DEST's catalog (rebuild it from the store, compact it)."""

from __future__ import annotations

from typing import Annotated

import typer

from qwbatch.cli.app import app
from qwbatch.core.errors import QwBatchError
from qwbatch.core.settings import Settings
from qwbatch.storage.stores import open_store

catalog_app = typer.Typer(
    name="catalog",
    help="Look after DEST's catalog: rebuild it from the images, compact its parts.",
    no_args_is_help=True,
)
app.add_typer(catalog_app, name="catalog")

Dest = Annotated[str, typer.Argument(help="Output folder or s3://bucket/prefix")]


def _fail(exc: QwBatchError) -> None:
    typer.echo(f"qwbatch: {exc}", err=True)
    raise typer.Exit(2)


@catalog_app.command()
def rebuild(dest: Dest) -> None:
    """Give every stored image a catalog row again, from its object metadata."""
    from qwbatch.catalog.rebuild import rebuild as rebuild_catalog

    try:
        result = rebuild_catalog(open_store(dest, Settings()))
    except QwBatchError as exc:
        _fail(exc)
        return
    for uri in result.quarantined:
        typer.echo(f"unreadable part moved to quarantine/: {uri}")
    typer.echo(
        f"{result.images} images; {result.rows_added} rows added"
        + (f" in {result.part_uri}" if result.part_uri else " (the catalog already had them)")
    )
    for uri in result.unusable:
        typer.echo(f"no usable metadata, no row: {uri}", err=True)
    raise typer.Exit(1 if result.unusable else 0)


@catalog_app.command()
def compact(
    dest: Dest,
    max_rows: Annotated[int, typer.Option(help="Rows per merged part")] = 1_000_000,
) -> None:
    """Merge the catalog's small parts (of finished runs) into a few large ones."""
    from qwbatch.runs.compaction import compact as compact_catalog

    try:
        result = compact_catalog(open_store(dest, Settings()), max_rows=max_rows)
    except QwBatchError as exc:
        _fail(exc)
        return
    if result.recovered:
        typer.echo(f"{result.recovered} interrupted compactions finished first")
    if result.merged_parts:
        typer.echo(
            f"{result.merged_parts} parts ({result.rows} rows) merged into "
            f"{len(result.new_parts)}: " + ", ".join(result.new_parts)
        )
    else:
        typer.echo("nothing to compact")
    if result.skipped_parts:
        typer.echo(f"{result.skipped_parts} parts of unfinished runs left as they are")
