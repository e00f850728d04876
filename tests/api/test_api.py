"""The Python API: manifests as paths, pyarrow Tables, pandas and polars DataFrames; calls
from inside a running event loop; ``read_catalog`` after reruns."""

from __future__ import annotations

import asyncio
import importlib
import time
from pathlib import Path

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import qwbatch
from qwbatch.api.manifests import manifest_uri, to_arrow
from qwbatch.core.errors import ManifestError
from qwbatch.core.settings import Settings
from qwbatch.runs.summary import RunSummary

ROWS = {"id": ["a", "b", "bad"], "prompt": ["a cat", "a dog", ""], "size": ["512*512"] * 3}


def _tables() -> dict[str, object]:
    return {
        "pyarrow": pa.table(ROWS),
        "pandas": pd.DataFrame(ROWS),
        "polars": pl.DataFrame(ROWS),
    }


def test_the_public_api_is_small_and_typed() -> None:
    assert set(qwbatch.__all__) == {
        "ManifestLike",
        "Validation",
        "__version__",
        "estimate",
        "read_catalog",
        "run",
        "validate",
    }
    for name in ("run", "estimate", "validate", "read_catalog"):
        assert getattr(qwbatch.api, name).__doc__
    assert "run" in dir(qwbatch)
    # qwbatch.run stays the call even after the run stage's package (qwbatch.runs) is imported.
    importlib.import_module("qwbatch.runs.summary")
    assert qwbatch.run is qwbatch.api.run
    assert qwbatch.runs.summary.RunSummary is RunSummary
    with pytest.raises(AttributeError):
        _ = qwbatch.nothing_here  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["path", "pyarrow", "pandas", "polars"])
def test_validate_takes_a_path_or_any_table(kind: str, tmp_path: Path) -> None:
    if kind == "path":
        manifest: object = tmp_path / "m.parquet"
        pq.write_table(pa.table(ROWS), manifest)
    else:
        manifest = _tables()[kind]
    found = qwbatch.validate(manifest)
    assert (found.valid, [r.row_id for r in found.rejects]) == (2, ["bad"])
    assert not found.ok


def test_the_same_rows_are_the_same_manifest_file_whatever_the_library(tmp_path: Path) -> None:
    names = set()
    for table in _tables().values():
        with manifest_uri(table, out=str(tmp_path / "out"), settings=Settings()) as path:
            names.add(Path(path).relative_to(tmp_path / "out").as_posix())
    assert len(names) == 1
    (name,) = names
    assert name.startswith("manifests/table-")
    assert pq.read_table(tmp_path / "out" / name).schema.field("id").type == pa.string()


def test_a_table_that_is_not_one_is_refused() -> None:
    with pytest.raises(ManifestError, match="not int"):
        to_arrow(42)
    # Categories (dictionary columns) are plain strings in the written manifest.
    frame = pd.DataFrame({"id": ["a"], "prompt": pd.Categorical(["x"])})
    assert to_arrow(frame).schema.field("prompt").type == pa.string()


def test_estimate_of_a_dataframe_writes_nothing_even_from_a_running_loop(tmp_path) -> None:
    out = tmp_path / "out"

    async def in_a_notebook_cell() -> qwbatch.Validation:
        plan = qwbatch.estimate(pl.DataFrame(ROWS), out)
        assert (plan.requests, plan.rejected) == (2, 1)
        assert plan.estimate is not None
        assert plan.estimate.total > 0
        return qwbatch.validate(pd.DataFrame(ROWS))

    assert asyncio.run(in_a_notebook_cell()).valid == 2
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.usefixtures("sim_env")
def test_run_inside_a_loop_then_reruns_and_read_catalog(
    prefect_server, sim, tmp_path: Path
) -> None:
    out = tmp_path / "out"

    async def notebook_cell() -> RunSummary:
        asyncio.get_running_loop()  # a loop runs here, as in Jupyter
        return qwbatch.run(pd.DataFrame(ROWS), out, quiet=True)

    first = asyncio.run(notebook_cell())
    assert (first.statuses, first.rejected) == ({"succeeded": 2}, 1)
    assert sim.ledger()["billed_images"] == 2
    assert len(list((out / "manifests").glob("table-*.parquet"))) == 1

    # The same rows from polars: the same manifest, nothing new, no provider call.
    again = qwbatch.run(pl.DataFrame(ROWS), out, quiet=True)
    assert again.requests == 0
    assert sim.ledger()["billed_images"] == 2

    # A pyarrow table with one row changed and one added: two new requests. (Run ids order
    # runs to the second; the views take the newest run of each row by its id.)
    time.sleep(1.1)
    changed = pa.table(
        {
            "id": ["a", "b", "c"],
            "prompt": ["a cat", "a red dog", "a cow"],
            "size": ["512*512"] * 3,
        }
    )
    second = qwbatch.run(changed, out, quiet=True)
    assert (second.statuses, second.deduplicated) == ({"succeeded": 2}, 1)
    assert sim.ledger()["billed_images"] == 4

    latest = qwbatch.read_catalog(out)
    assert latest.column("row_id").to_pylist() == ["a", "b", "c"]
    assert set(latest.column("run_id").to_pylist()) == {second.run_id}
    assert pl.from_arrow(latest).filter(pl.col("row_id") == "b")["prompt"][0] == "a red dog"
    every = qwbatch.read_catalog(out, latest=False)
    # The first run's two rows, the rerun's two (deduplicated), the last run's three.
    assert every.num_rows == 2 + 2 + 3
    assert qwbatch.read_catalog(out, run=first.run_id).num_rows == 2
    assert qwbatch.read_catalog(out, run="latest").num_rows == 3


@pytest.mark.slow
@pytest.mark.usefixtures("sim_env")
def test_run_with_a_path_as_the_cli_does(prefect_server, sim, tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table(ROWS), path)
    summary = qwbatch.run(str(path), str(tmp_path / "out"), quiet=True, max_in_flight=2)
    assert summary.statuses == {"succeeded": 2}
    assert not (tmp_path / "out" / "manifests").exists()  # a file manifest is not copied
