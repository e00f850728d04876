"""``qwbatch text-check DEST``: read a catalog's images again and judge their text; no calls."""

from __future__ import annotations

from typing import Annotated

import typer

from qwbatch.cli.app import _fail, app
from qwbatch.core.errors import QwBatchError
from qwbatch.core.settings import Settings


@app.command("text-check")
def text_check(
    dest: Annotated[str, typer.Argument(help="Output folder or s3://bucket/prefix of runs")],
    manifest: Annotated[
        str | None,
        typer.Option(help="Take expected_text from this manifest, by row id (else the catalog's)"),
    ] = None,
    run: Annotated[str | None, typer.Option("--run", help="Only rows of this run id")] = None,
    max_cer: Annotated[
        float | None,
        typer.Option(help="Character error rate an expected text may read with [0: exact]"),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="OCR worker processes [one per core, at most 2]", min=1)
    ] = None,
) -> None:
    """Read the text on DEST's stored images again and update their catalog rows.

    Nothing is rendered or paid for: misspelt images are marked text_mismatch, not re-rolled.
    """
    from qwbatch.manifest.expected import expected_texts
    from qwbatch.runs.text_check import text_check as check
    from qwbatch.storage.stores import open_store

    settings = Settings()
    try:
        expected = expected_texts(manifest, settings=settings) if manifest else None
        result = check(
            open_store(dest, settings),
            expected=expected,
            run_id=run,
            max_cer=settings.text_max_cer if max_cer is None else max_cer,
            workers=workers if workers is not None else settings.text_workers,
        )
    except QwBatchError as exc:
        _fail(str(exc))
        return
    typer.echo(result.line())
