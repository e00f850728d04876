"""Write docs/api.md: the hand-written opening below, then each public call's signature and
docstring, read from the code (so the page cannot drift: tests/api/test_api_docs.py fails
when it is stale). Run ``python tools/api_docs.py`` from the repository root after changing
a docstring."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import qwbatch
import qwbatch.export
from qwbatch.api import Validation
from qwbatch.export import ExportResult

PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"

OPENING = """# The Python API

`import qwbatch` offers the CLI's commands as calls of the same names, for scripts and
notebooks: `run`, `estimate` (`run --dry-run`), `validate`, `read_catalog`, and
`qwbatch.export.export` (`qwbatch export`). The CLI is a thin layer over these calls: same
options, same defaults, names in snake_case.

## In a notebook

```python
import polars as pl, qwbatch
df = pl.DataFrame({"id": ["cat", "dog"], "prompt": ["a cat in a hat", "a dog on a log"]})
summary = qwbatch.run(df, "out", budget=2)             # a progress bar while it renders
catalog = pl.from_arrow(qwbatch.read_catalog("out"))   # one row per image
qwbatch.export.export("out", "dataset", format="hf")   # datasets.load_dataset("dataset")
```

- **Manifests** are a path or URI as for the CLI, or a table: a `pyarrow.Table`, a pandas
  or a polars DataFrame, or anything with `__arrow_c_stream__` (neither pandas nor polars
  is a dependency of qwbatch). A table is saved once as
  `OUT/manifests/table-<hash>.parquet`, named by its bytes, so calling `run` again with the
  same rows (from any library) is the same run: it resumes an unfinished one, and rows
  already rendered are deduplicated, exactly as with a file. `estimate` and `validate` save
  it in a temporary folder instead. Edit inputs named by relative paths in a table are
  looked up in `QWBATCH_INPUT_ROOTS`: use absolute paths or URIs there.
- **Event loops.** Called where an event loop runs (a Jupyter cell), a call runs in a
  thread of its own and waits for it; the notebook's stop button stops a run cleanly, as
  Ctrl-C does in a terminal (work in flight is journaled, `summary.left` says what is left,
  the next `run` resumes it).
- **Progress.** `run` shows a live bar on a terminal, and in a notebook when ipywidgets is
  installed; elsewhere one plain line every 10 seconds on stderr. `quiet=True` hides it.
- **Errors** are `qwbatch.core.errors.QwBatchError` subclasses whose message says why (a
  refused manifest or budget, an unreachable store); the CLI prints the same message.
- **Settings** (the provider's key and endpoint, S3, rates) come from the environment as
  for the CLI (`DASHSCOPE_API_KEY`, `QWBATCH_…`); the call's options go on top.
- `qwbatch.run` is this call; the run stage's own package is `qwbatch.runs` (its
  `summary.RunSummary` is what the call returns).

## Reference
"""


def _entry(title: str, obj: object) -> str:
    doc = inspect.cleandoc(obj.__doc__ or "")
    if inspect.isclass(obj):
        fields = getattr(obj, "__dataclass_fields__", {})
        names = ", ".join(f"`{name}`" for name in fields)
        return f"### `{title}`\n\n{doc}\n\nFields: {names}.\n"
    signature = str(inspect.signature(obj)).replace("'", "")
    return f"### `{title}{signature}`\n\n```text\n{doc}\n```\n"


def page() -> str:
    entries = [
        ("qwbatch.run", qwbatch.api.run),
        ("qwbatch.estimate", qwbatch.estimate),
        ("qwbatch.validate", qwbatch.validate),
        ("qwbatch.Validation", Validation),
        ("qwbatch.read_catalog", qwbatch.read_catalog),
        ("qwbatch.export.export", qwbatch.export.export),
        ("qwbatch.export.ExportResult", ExportResult),
    ]
    return OPENING + "\n" + "\n".join(_entry(title, obj) for title, obj in entries)


if __name__ == "__main__":
    PAGE.write_text(page())
    sys.stdout.write(f"wrote {PAGE}\n")
