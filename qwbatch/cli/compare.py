"""``qwbatch compare``: the same rows on several models, side by side (PNG and HTML)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from qwbatch.cli.app import _fail, app
from qwbatch.core.errors import QwBatchError
from qwbatch.core.settings import Settings


@app.command()
def compare(
    dest: Annotated[str, typer.Argument(help="Output folder or s3://bucket/prefix of a run")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for compare.png and compare.html")
    ] = Path("compare"),
    models: Annotated[
        str | None, typer.Option(help="Columns, in order: a,b,c (default: every model)")
    ] = None,
    run: Annotated[
        str | None, typer.Option(help="A run id, or 'latest' (default: latest of every row)")
    ] = None,
    blind: Annotated[
        bool, typer.Option(help="Hide model names; the key goes to compare-key.json apart")
    ] = False,
    key_file: Annotated[
        Path | None, typer.Option(help="Where blind mode writes its key (default: OUT/…)")
    ] = None,
    seed: Annotated[int, typer.Option(help="Blind mode's shuffle seed")] = 0,
) -> None:
    """Draw DEST's rows on each model side by side: a line per row, a column per model."""
    from qwbatch.manifest.columns import models_from_text
    from qwbatch.report.compare import make_compare_sheet
    from qwbatch.storage.stores import open_store

    chosen = list(models_from_text(models) or ()) if models else None
    try:
        store = open_store(dest, Settings())
        sheet = make_compare_sheet(store, run=run, models=chosen, blind=blind, seed=seed)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.png").write_bytes(sheet.png())
        (out / "compare.html").write_text(sheet.html(), encoding="utf-8")
        if blind:
            key_path = key_file or out / "compare-key.json"
            key_path.write_text(json.dumps(sheet.key, indent=2, ensure_ascii=False), "utf-8")
            typer.echo(f"blind key → {key_path} (keep it from the judges)")
    except QwBatchError as exc:
        _fail(str(exc))
        return
    except OSError as exc:
        _fail(f"cannot write to {out}: {exc.strerror}")
        return
    typer.echo(f"{len(sheet.lines)} rows × {len(sheet.columns)} models → {out}/compare.png, .html")
