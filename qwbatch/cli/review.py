"""``qwbatch review``: record a review's decisions (exported by the report page) in DEST."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qwbatch.cli.app import _fail, app
from qwbatch.core.errors import QwBatchError
from qwbatch.core.settings import Settings


@app.command("review")
def review(
    dest: Annotated[str, typer.Argument(help="Output folder or s3://bucket/prefix of runs")],
    decisions: Annotated[
        Path, typer.Argument(help="decisions.json, exported by report --html --review")
    ],
) -> None:
    """Record approve/reject decisions and notes in DEST, beside its catalog.

    Each decision names an image by run, row and image index; one that names no image in
    DEST's catalog is refused with its reason, and the others are recorded.
    """
    from qwbatch.catalog.review import parse_decisions, record_decisions
    from qwbatch.storage.stores import open_store

    try:
        items = parse_decisions(decisions.read_bytes())
        done = record_decisions(open_store(dest, Settings()), items)
    except QwBatchError as exc:
        _fail(str(exc))
        return
    except OSError as exc:
        _fail(f"cannot read {decisions}: {exc.strerror}")
        return
    for line in done.lines():
        typer.echo(line)
    raise typer.Exit(1 if done.refused else 0)
