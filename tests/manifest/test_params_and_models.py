"""The params column (checked against the model table) and rows rendered on several models."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.core.types import RenderRequest
from qwbatch.manifest import read_manifest
from qwbatch.manifest.rejects import Reject

TABLE = ModelTable.load()


def read(
    tmp_path: Path, rows: list[dict[str, object]], **settings: object
) -> tuple[list[RenderRequest], list[Reject]]:
    path = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    reader = read_manifest(
        path, table=TABLE, default_model="qwen-image-2.0", settings=Settings(**settings)
    )
    return reader.collect()


def test_params_are_checked_normalised_and_keyed(tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [
        {"id": "a", "prompt": "p", "model": "gpt-image-2", "params": '{"quality": "low"}'},
        {"id": "b", "prompt": "p", "model": "gpt-image-2", "params": None},
        {"id": "c", "prompt": "p", "model": "gpt-image-2", "params": '{"quality": "ultra"}'},
        {"id": "d", "prompt": "p", "model": "flux-2-flex", "params": '{"steps": "30"}'},
        {"id": "e", "prompt": "p", "model": "flux-2-pro", "params": '{"steps": 30}'},
        {"id": "f", "prompt": "p", "params": '{"quality": "low"}'},
        {"id": "g", "prompt": "p", "model": "flux-2-pro", "params": '{"safety_tolerance": 9}'},
    ]
    requests, rejects = read(tmp_path, rows)
    by_id = {r.row_id: r for r in requests}
    assert by_id["a"].params == (("quality", "low"),)
    assert by_id["d"].params == (("steps", 30),)
    assert by_id["a"].request_key != by_id["b"].request_key  # params change the pixels
    reasons = {r.row_id: r.reason for r in rejects}
    assert set(reasons) == {"c", "e", "f", "g"}
    assert "one of low, medium, high, auto" in reasons["c"]
    assert "not a parameter of flux-2-pro" in reasons["e"]
    assert "takes: none" in reasons["f"]  # Qwen models take no params
    assert "0…5" in reasons["g"]


def test_rows_without_params_keep_their_keys(tmp_path: Path) -> None:
    (with_column,), _ = read(tmp_path, [{"id": "a", "prompt": "p", "params": None}])
    (without,), _ = read(tmp_path, [{"id": "a", "prompt": "p"}])
    assert with_column.request_key == without.request_key


def test_a_models_cell_renders_the_row_on_each_model(tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [
        {
            "id": "r1",
            "prompt": "a sign that says OPEN",
            "size": None,
            "models": "qwen-image-2.0, flux-2-pro",
        },
        {"id": "r2", "prompt": "p", "size": "1000*1000", "models": "qwen-image-2.0,gpt-image-2"},
    ]
    requests, rejects = read(tmp_path, rows)
    assert sorted(r.row_id for r in requests) == [
        "r1@flux-2-pro",
        "r1@qwen-image-2.0",
        "r2@qwen-image-2.0",
    ]
    assert len({r.request_key for r in requests}) == 3
    (reject,) = rejects  # 1000 is no multiple of 16: refused for gpt-image-2 only
    assert reject.row_id == "r2@gpt-image-2"
    assert "multiples of 16" in reject.reason


def test_models_setting_applies_to_every_row_and_dead_models_are_refused(tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [{"id": f"r{i}", "prompt": f"p{i}"} for i in range(3)]
    requests, rejects = read(tmp_path, rows, models=["qwen-image-2.0", "gpt-image-1"])
    assert len(requests) == 3
    assert len(rejects) == 3
    assert all("shut down" in r.reason for r in rejects)


def test_repeated_ids_are_still_refused_across_models(tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [
        {"id": "same", "prompt": "one", "models": "qwen-image-2.0,flux-2-pro"},
        {"id": "same", "prompt": "two", "models": "qwen-image-2.0,flux-2-pro"},
    ]
    requests, rejects = read(tmp_path, rows)
    assert len(requests) == 2
    assert all("duplicate id" in r.reason for r in rejects)
