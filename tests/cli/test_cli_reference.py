"""docs/cli-reference.md is what tools/cli_reference.py writes from the commands' --help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
PAGE = ROOT / "docs" / "cli-reference.md"


def _generated() -> str:
    # A fresh process: the tool sets the environment typer reads when first imported.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "37"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "cli_reference.py"), "--stdout"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        cwd=ROOT,
        check=True,
    )
    return done.stdout


def test_cli_reference_is_current() -> None:
    generated = _generated()
    assert PAGE.read_text(encoding="utf-8") == generated, (
        "docs/cli-reference.md is stale: run `make cli-docs` "
        "(or `python tools/cli_reference.py`) and commit it"
    )


def test_cli_reference_has_every_command_and_no_terminal_codes() -> None:
    page = PAGE.read_text(encoding="utf-8")
    commands = ("run", "validate", "estimate", "report", "catalog rebuild", "manifest template")
    for command in commands:
        assert f"## `qwbatch {command}`" in page
    assert "\x1b[" not in page  # no colour
    assert "╭" not in page  # no rich boxes
