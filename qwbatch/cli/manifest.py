"""``qwbatch manifest …``: write manifests from spreadsheets, or start from a template."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qwbatch.cli.app import _fail, app
from qwbatch.core.errors import QwBatchError
from qwbatch.core.settings import Settings

manifest_app = typer.Typer(
    name="manifest",
    help="Author manifests: from CSV or JSON Lines, or from an annotated template.",
    no_args_is_help=True,
)
app.add_typer(manifest_app, name="manifest")

_Out = Annotated[Path, typer.Option("--out", "-o", help="Parquet manifest to write")]
_Model = Annotated[str | None, typer.Option(help="Default model for rows without one")]
_Strict = Annotated[bool, typer.Option(help="Write nothing if any row is bad")]
_Rejects = Annotated[
    Path | None, typer.Option(help="Write rejected rows and reasons to this Parquet file")
]


def _convert(
    kind: str,
    source: Path,
    out: Path,
    model: str | None,
    strict: bool,
    rejects: Path | None,
    delimiter: str = ",",
) -> None:
    import pyarrow.parquet as pq

    from qwbatch.manifest import rejects_table
    from qwbatch.manifest.converters import convert, read_csv, read_jsonl
    from qwbatch.runs.runner import model_table

    settings = Settings(default_model=model) if model else Settings()
    try:
        table = read_csv(source, delimiter=delimiter) if kind == "csv" else read_jsonl(source)
        done = convert(
            table,
            out,
            table=model_table(settings),
            default_model=settings.default_model,
            strict=strict,
        )
    except QwBatchError as exc:
        _fail(str(exc))
        return
    for warning in done.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if rejects is not None and done.rejects:
        pq.write_table(rejects_table(done.rejects), rejects)
    typer.echo(f"{done.written} rows → {out}, {len(done.rejects)} rejected")
    for r in done.rejects[:50]:
        line = done.line_of_row.get(r.row_number)
        where = f"row {r.row_number}" + (f" (line {line})" if line else "")
        typer.echo(f"  {where} id={r.row_id!r} [{r.column}]: {r.reason}")
    if len(done.rejects) > 50:
        typer.echo(f"  … and {len(done.rejects) - 50} more")
    raise typer.Exit(1 if done.rejects else 0)


@manifest_app.command("from-csv")
def from_csv(
    source: Annotated[Path, typer.Argument(help="CSV file, UTF-8, with a header row")],
    out: _Out,
    model: _Model = None,
    strict: _Strict = False,
    rejects: _Rejects = None,
    delimiter: Annotated[str, typer.Option(help="Cell separator")] = ",",
) -> None:
    """Validate a CSV as a run would and write its good rows as a Parquet manifest."""
    _convert("csv", source, out, model, strict, rejects, delimiter)


@manifest_app.command("from-jsonl")
def from_jsonl(
    source: Annotated[Path, typer.Argument(help="JSON Lines file: one object a line")],
    out: _Out,
    model: _Model = None,
    strict: _Strict = False,
    rejects: _Rejects = None,
) -> None:
    """Validate a JSON Lines file as a run would and write its good rows as a manifest."""
    _convert("jsonl", source, out, model, strict, rejects)


@manifest_app.command()
def template(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="File to write (default: stdout)")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv or jsonl")] = "csv",
) -> None:
    """Write an annotated example manifest (every column explained) to start from."""
    from qwbatch.manifest.template import template_text

    if fmt not in ("csv", "jsonl"):
        _fail(f"--format must be csv or jsonl, not {fmt!r}")
        return
    text = template_text("jsonl" if fmt == "jsonl" else "csv")
    if out is None:
        typer.echo(text, nl=False)
        return
    out.write_text(text, encoding="utf-8")
    typer.echo(f"template → {out}")
