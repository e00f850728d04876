"""``qwbatch lineage ROW_ID --out DEST``: where an output came from, edit by edit."""

from __future__ import annotations

from typing import Annotated

import typer

from qwbatch.cli.app import _fail, app
from qwbatch.core.errors import QwBatchError
from qwbatch.core.settings import Settings


@app.command()
def lineage(
    row_id: Annotated[str, typer.Argument(help="Catalog row id of the output to trace")],
    out: Annotated[str, typer.Option("--out", "-o", help="Output folder or s3://bucket/prefix")],
    image: Annotated[int, typer.Option(help="Which of the row's images (0-based)")] = 0,
) -> None:
    """Trace ROW_ID's output back through the edits that made it to the original inputs."""
    from qwbatch.inputs.lineage import trace
    from qwbatch.storage.stores import open_store

    try:
        node = trace(open_store(out, Settings()), row_id, image_index=image)
    except QwBatchError as exc:
        _fail(str(exc))
        return
    for line in node.lines():
        typer.echo(line)
