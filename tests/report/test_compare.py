"""qwbatch compare: lines by row (ID@MODEL) or prompt, a column per model, blind with a key."""

from __future__ import annotations

import json
from pathlib import Path

from render_helpers import render
from support import engine_settings, make_request
from typer.testing import CliRunner

from qwbatch.cli import app
from qwbatch.core.types import PlanItem
from qwbatch.report.compare import make_compare_sheet
from qwbatch.storage.stores import open_store

MODELS = ("qwen-image-2.0", "qwen-image-2.0-pro")


def render_side_by_side(sim, out: Path) -> None:  # type: ignore[no-untyped-def]
    items = [
        PlanItem(make_request(f"{row}@{model}", prompt, model=model, tags=tags))
        for row, prompt, tags in (
            ("sign", "a sign that says OPEN", (("expected_text", "OPEN"),)),
            ("mug", "a blue mug", ()),
        )
        for model in MODELS
    ]
    render(items, engine_settings(sim), out)


def test_a_line_per_row_and_a_column_per_model(sim, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    render_side_by_side(sim, tmp_path)
    sheet = make_compare_sheet(open_store(str(tmp_path), engine_settings(sim)))
    assert sheet.columns == list(MODELS)
    assert [line.key for line in sheet.lines] == ["mug", "sign"]
    sign = sheet.lines[1]
    assert sign.expected_text == "OPEN"
    assert set(sign.cells) == set(MODELS)
    assert all(cell.thumbnail for cell in sign.cells.values())
    assert "0.0350 USD" in sheet.html()
    assert sheet.png().startswith(b"\x89PNG")


def test_blind_mode_writes_the_key_apart_and_hides_models_and_costs(
    sim,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    render_side_by_side(sim, tmp_path / "dest")
    out = tmp_path / "sheet"
    result = CliRunner().invoke(
        app,
        ["compare", str(tmp_path / "dest"), "-o", str(out), "--blind", "--seed", "5"],
        env={"DASHSCOPE_API_KEY": "unused"},
    )
    assert result.exit_code == 0, result.output
    page = (out / "compare.html").read_text(encoding="utf-8")
    assert "qwen-image" not in page
    assert "USD" not in page
    key = json.loads((out / "compare-key.json").read_text(encoding="utf-8"))
    assert set(key) == {"mug", "sign"}
    assert set(key["sign"].values()) == set(MODELS)
    assert (out / "compare.png").stat().st_size > 0
