"""The layer contract bites: a planted upward import, even inside a function, fails the lint.

The house's layers are written down in pyproject.toml ([tool.importlinter]) and checked by
``make lint`` (lint-imports, then tools/import_cycles.py). These tests copy the packages to a
temporary folder, plant one forbidden import, and run both checks there.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of qwbatch/, flows/, tools/ and pyproject.toml to plant imports in."""
    for name in ("qwbatch", "flows", "tools"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _plant(tree: Path, module: str, line: str) -> None:
    path = tree / module
    path.write_text(path.read_text() + f"\n\ndef _planted() -> None:\n    {line}\n")


def _check(tree: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": str(LINT_IMPORTS.parent)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_tree_as_committed_keeps_its_layers_and_has_no_cycles(tree: Path) -> None:
    layers = _check(tree, str(LINT_IMPORTS))
    assert layers.returncode == 0, layers.stdout
    cycles = _check(tree, sys.executable, "tools/import_cycles.py")
    assert cycles.returncode == 0, cycles.stdout
    assert " 0 cycles" in cycles.stdout


def test_an_upward_import_inside_a_function_fails_the_layer_contract(tree: Path) -> None:
    _plant(tree, "qwbatch/core/keys.py", "from qwbatch.runs import runner  # noqa: F401")
    result = _check(tree, str(LINT_IMPORTS))
    assert result.returncode != 0
    assert "qwbatch.core.keys -> qwbatch.runs.runner" in result.stdout


def test_a_deferred_import_that_closes_a_circle_fails_the_cycle_check(tree: Path) -> None:
    # render.engine imports render.retries; importing back from inside a function makes a
    # circle that only a check which reads function bodies can see.
    _plant(tree, "qwbatch/render/retries.py", "from qwbatch.render import engine  # noqa: F401")
    result = _check(tree, sys.executable, "tools/import_cycles.py")
    assert result.returncode != 0
    assert "CYCLE:" in result.stdout
