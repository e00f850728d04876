"""``qwbatch export DEST --format hf|webdataset|files --to TARGET``: a thin layer over
:func:`qwbatch.export.export`."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from qwbatch.cli.app import app
from qwbatch.core.errors import QwBatchError


@app.command()
def export(
    dest: Annotated[str, typer.Argument(help="Output folder or s3://bucket/prefix to export")],
    to: Annotated[str, typer.Option("--to", help="Target folder or s3://bucket/prefix")],
    format: Annotated[
        Literal["hf", "webdataset", "files"],
        typer.Option(help="hf: Parquet + dataset card; webdataset: tar shards; files: PNGs"),
    ] = "hf",
    run: Annotated[
        str | None, typer.Option(help="Only this run's rows ('latest': the newest run)")
    ] = None,
    status: Annotated[
        list[str] | None,
        typer.Option(help="Statuses to export (repeat); default: succeeded and deduplicated"),
    ] = None,
    filter_: Annotated[
        list[str] | None,
        typer.Option("--filter", help="FIELD=PATTERN or FIELD!=PATTERN, as in report (repeat)"),
    ] = None,
    shard_size: Annotated[
        float, typer.Option(help="Megabytes of images per shard", min=0.001)
    ] = 256.0,
    caption_column: Annotated[
        str | None, typer.Option(help="Catalog column or tag.NAME to use as the text")
    ] = None,
    split_by: Annotated[
        str | None, typer.Option(help="Catalog column or tag.NAME whose value is the split")
    ] = None,
    val_fraction: Annotated[
        float, typer.Option(help="Share of rows (by row id) in the validation split", min=0)
    ] = 0.0,
    approved_only: Annotated[
        bool, typer.Option(help="Only images a review approved (qwbatch review)")
    ] = False,
    path_template: Annotated[
        str | None,
        typer.Option(
            help="files: where each image goes, e.g. '{tag.campaign}/{row_id}-{k}.png'"
            " (catalog columns, tag.NAME, k = image number from 1, split, name)"
        ),
    ] = None,
    zip_: Annotated[
        bool, typer.Option("--zip", help="files: also pack the export into TARGET/finals.zip")
    ] = False,
) -> None:
    """Export DEST's images and their records as a dataset: Hugging Face Parquet shards with
    a dataset card, WebDataset tar shards, or a folder of PNGs with index.csv.

    Re-running writes only what is missing. Exports hold no store URIs, keys or signed URLs.
    """
    from qwbatch.export import export as export_dataset
    from qwbatch.export.samples import DEFAULT_STATUSES

    try:
        result = export_dataset(
            dest,
            to,
            format=format,
            run=run,
            status=status or DEFAULT_STATUSES,
            filters=filter_ or (),
            shard_size_mb=shard_size,
            caption_column=caption_column,
            split_by=split_by,
            val_fraction=val_fraction,
            approved_only=approved_only,
            path_template=path_template,
            zip=zip_,
        )
    except QwBatchError as exc:
        typer.echo(f"qwbatch: {exc}", err=True)
        raise typer.Exit(2) from exc
    for line in result.lines():
        typer.echo(line)
    raise typer.Exit(1 if result.missing else 0)
