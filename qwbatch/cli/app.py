"""The typer ``app`` every command registers on, and the helpers the commands share.

Command modules import from here (``from qwbatch.cli.app import _fail, app``), never from the
package, so the package can import them without a cycle; ``qwbatch.cli`` imports them all.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer

from qwbatch.core.errors import DestBusyError, QwBatchError

app = typer.Typer(
    name="qwbatch",
    help="Render Parquet manifests of prompts into images with Qwen-Image, at scale.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: The API key the bundled simulator is started with; never a real key.
SIMULATOR_KEY = "simulator-local-key"


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"qwbatch: {message}", err=True)
    raise typer.Exit(code)


def _not_a_file(where: str, what: str) -> None:
    """Fail clearly when ``where``, meant as a folder (DEST), is an existing file."""
    local = "://" not in where or where.startswith("file://")
    path = Path(where.removeprefix("file://")) if local else None
    if path is None:
        return
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        inside = "" if existing == path else f" ({existing} is)"
        _fail(
            f"{what} {where} is a file, not a folder{inside}: give a folder (made if "
            "missing) or s3://bucket/prefix"
        )


def _run_flow(manifest: str, out: str, *, quiet: bool = False, **params: Any) -> int:
    """:func:`qwbatch.api.run` and its summary printed; the exit code. Another run holding
    OUT (``--wait`` not given) exits 75 (EX_TEMPFAIL), naming the holder."""
    from qwbatch.api import run as run_manifest

    _not_a_file(out, "--out")
    if quiet:
        # Retries (stamina logs each one as a warning) and other passing troubles are the
        # engine's business: --quiet leaves errors and the run's own lines.
        for name in ("stamina", "qwbatch", "flows"):
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        summary = run_manifest(manifest, out, quiet=quiet, **params)
    except DestBusyError as exc:
        _fail(str(exc), code=75)
        return 75
    except QwBatchError as exc:
        _fail(str(exc))
        return 2
    if summary.left:
        # Stopped by a signal: one line of what is left, and the signal's exit code.
        from qwbatch.core.stop import STOP

        typer.echo(f"qwbatch: {summary.left_line()}", err=True)
        return STOP.exit_code() if STOP.is_set() else 1
    for line in summary.lines():
        typer.echo(line)
    return 1 if summary.failed else 0
