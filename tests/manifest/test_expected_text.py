"""The optional expected_text column: lists, JSON arrays, `|`-separated text, CSV and JSONL."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from qwbatch.core.model_table import ModelTable
from qwbatch.manifest import read_manifest
from qwbatch.manifest.converters import convert, read_csv, read_jsonl
from qwbatch.manifest.template import template_text

TABLE = ModelTable.load()


def _read(path: Path) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    requests, rejects = read_manifest(path, table=TABLE, default_model="qwen-image-2.0").collect()
    return (
        {r.row_id: r.expected_text for r in requests},
        {r.row_id or "": r.reason for r in rejects},
    )


def test_lists_json_and_bars(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    pq.write_table(
        pa.table(
            {
                "id": ["list", "bars", "json", "none", "empty", "bad"],
                "prompt": ["p1", "p2", "p3", "p4", "p5", "p6"],
                "expected_text": pa.array(
                    ['["SALE", " 秋季新品 "]', "SALE | 全场八折", '["a|b"]', None, " | ", "[1, 2]"]
                ),
            }
        ),
        path,
    )
    found, rejects = _read(path)
    assert found == {
        "list": ("SALE", "秋季新品"),
        "bars": ("SALE", "全场八折"),
        "json": ("a|b",),  # a bar inside a JSON array is the text's own
        "none": (),
        "empty": (),
    }
    assert "expected_text" in rejects["bad"]

    listed = tmp_path / "l.parquet"
    column = pa.array([["Lantern Night", ""], None], pa.list_(pa.string()))
    pq.write_table(
        pa.table({"id": ["a", "b"], "prompt": ["x", "y"], "expected_text": column}), listed
    )
    assert _read(listed)[0] == {"a": ("Lantern Night",), "b": ()}


def test_csv_and_jsonl_converters_and_the_template(tmp_path: Path) -> None:
    csv_path = tmp_path / "m.csv"
    csv_path.write_text('id,prompt,expected_text\nr1,"a poster",SALE|全场八折\nr2,plain,\n')
    out = tmp_path / "m.parquet"
    convert(read_csv(csv_path), out, table=TABLE, default_model="qwen-image-2.0")
    assert pq.read_table(out).column("expected_text").to_pylist() == [["SALE", "全场八折"], None]
    assert _read(out)[0] == {"r1": ("SALE", "全场八折"), "r2": ()}

    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"id": "j1", "prompt": "x", "expected_text": ["灯笼夜市", "7pm"]}\n')
    convert(read_jsonl(jsonl), out, table=TABLE, default_model="qwen-image-2.0")
    assert _read(out)[0] == {"j1": ("灯笼夜市", "7pm")}

    assert "秋季新品|全场八折" in template_text("csv")


def test_the_estimate_shows_what_rerolls_may_add(tmp_path: Path) -> None:
    from decimal import Decimal

    from qwbatch.budget.policy import BudgetPolicy
    from qwbatch.core.settings import Settings
    from qwbatch.runs.runner import estimate

    path = tmp_path / "m.parquet"
    pq.write_table(
        pa.table(
            {
                "id": ["a", "b", "c"],
                "prompt": ['"SALE"', "plain", '"新品"'],
                "n": [2, 1, 1],
                "expected_text": [["SALE"], None, ["新品"]],
            }
        ),
        path,
    )
    settings = Settings(budget_backend="local")
    streamed = estimate(str(path), None, settings=settings).estimate
    in_memory = estimate(
        str(path), None, settings=settings, budget=BudgetPolicy(Decimal(100), "refuse")
    ).estimate
    for figures in (streamed, in_memory):
        assert figures is not None
        assert figures.text_images == 3
        assert figures.rerolls_at_most(2) == 2 * 3 * Decimal("0.035")
