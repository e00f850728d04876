"""The ``qwbatch`` command (typer). Each command is a thin layer over one library call.

::

    app.py            the typer ``app``, ``_fail`` and the run helpers every command shares
    run.py            run, validate, simulator, demo
    dry_run.py        ``run --dry-run``: plan and print the plan
    export.py         export (Hugging Face, WebDataset, files)
    costs.py          estimate, report (text, JSON, HTML)
    contact_sheet.py  contact-sheet
    compare.py        compare (the same rows on several models, side by side)
    limits.py         limits
    lineage.py        lineage
    catalog.py        catalog rebuild, catalog compact
    manifest.py       manifest from-csv, from-jsonl, template
    _groups.py        imports each command module so its commands register on ``app``

``main`` is the console entry point (``qwbatch``, ``python -m qwbatch.cli``). The commands are
listed one line each in the README and in full in docs/cli-reference.md.
"""

from __future__ import annotations

import sys

import typer

from qwbatch.cli import _groups as _groups  # registers every command on `app`
from qwbatch.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """Run the ``qwbatch`` command; Ctrl-C before the run handles it exits 130."""
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("qwbatch: interrupted", err=True)
        sys.exit(130)
