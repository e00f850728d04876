"""docs/api.md is made from the docstrings (tools/api_docs.py); a stale page fails here."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_docs_api_md_is_fresh() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import api_docs
    finally:
        sys.path.remove(str(ROOT / "tools"))
    assert (ROOT / "docs" / "api.md").read_text() == api_docs.page(), (
        "docs/api.md is stale: run `make api-docs`"
    )


def test_the_notebook_example_names_only_real_calls() -> None:
    page = (ROOT / "docs" / "api.md").read_text()
    example = page.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(example.strip().splitlines()) == 5
    for call in ("qwbatch.run(", "qwbatch.read_catalog(", "qwbatch.export.export("):
        assert call in example
