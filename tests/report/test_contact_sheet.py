"""Contact sheets: CJK captions, the selection of rows, the grid's pixels, and the command."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageDraw
from render_helpers import render
from support import engine_settings, make_request
from typer.testing import CliRunner

from qwbatch.catalog import table as catalog
from qwbatch.catalog.view import RowFilter, parse_filters, select_rows
from qwbatch.cli import app
from qwbatch.core.errors import ConfigError
from qwbatch.core.fonts import caption_font, find_caption_font
from qwbatch.core.types import CatalogRecord, PlanItem
from qwbatch.report.contact_sheet import Layout, fit_lines, header_height, make_contact_sheet
from qwbatch.simulator.render import colour
from qwbatch.storage.stores import LocalStore

runner = CliRunner()
RUN_1 = "20260101T000000Z-aaaaaa"
RUN_2 = "20260102T000000Z-bbbbbb"


def glyph(text: str, size: int = 32) -> Image.Image:
    image = Image.new("L", (size * 2, size * 2), 0)
    ImageDraw.Draw(image).text((4, 4), text, font=caption_font(size), fill=255)
    return image


def test_captions_have_a_cjk_font_that_draws_distinct_glyphs() -> None:
    found = find_caption_font()
    assert found is not None
    assert found.cjk, "no CJK font: install manimgx-fonts-cjk"
    lantern, market = glyph("灯"), glyph("市")
    assert lantern.getbbox() is not None
    assert market.getbbox() is not None
    # A font without the glyphs draws the same empty box for both.
    assert ImageChops.difference(lantern, market).getbbox() is not None
    assert ImageChops.difference(glyph("ポ"), glyph("포")).getbbox() is not None


def test_fit_lines_wraps_words_breaks_cjk_and_marks_cuts() -> None:
    font = caption_font(14)
    width = round(font.getlength("a watercolour fox"))
    assert fit_lines("a watercolour fox", font, width, 2) == ["a watercolour fox"]
    lines = fit_lines("a watercolour fox curled asleep under a maple tree", font, width, 2)
    assert len(lines) == 2
    assert lines[0] == "a watercolour fox"
    assert lines[1].endswith("…")
    assert all(font.getlength(line) <= width for line in lines)
    zh = fit_lines("极简风格海报，标题“秋季新品”，副标题“全场八折”", font, 60, 3)
    assert len(zh) == 3
    assert zh[-1].endswith("…")
    assert all(font.getlength(line) <= 60 for line in zh)
    assert fit_lines("", font, 50, 2) == [""]


def test_filters_parse_and_match() -> None:
    row = {
        "row_id": "poster-zh",
        "status": "succeeded",
        "model": "qwen-image-2.0",
        "tags": [("campaign", "autumn-catalog")],
        "prompt": "极简风格海报",
    }
    assert RowFilter.parse("id=poster-*").matches(row)
    assert RowFilter.parse("tag.campaign=autumn*").matches(row)
    assert not RowFilter.parse("tag.kind=poster").matches(row)
    assert RowFilter.parse("status!=failed").matches(row)
    assert RowFilter.parse("prompt=*海报*").matches(row)
    for bad in ("status", "colour=red", "=x"):
        with pytest.raises(ConfigError, match="bad filter"):
            RowFilter.parse(bad)


@pytest.fixture
def dest(sim, tmp_path: Path) -> Path:
    """Two runs: run 1 renders three rows (one n=2); run 2 re-renders one and fails one."""
    settings = engine_settings(sim)
    out = tmp_path / "dest"
    first = [
        PlanItem(make_request("fox", "a watercolour fox", seed=1, tags=(("kind", "animal"),))),
        PlanItem(make_request("icons", "four flat icons", n=2, seed=2, tags=(("kind", "icon"),))),
        PlanItem(make_request("zh", "极简风格海报，标题“秋季新品”", seed=3, size="512*768")),
    ]
    render(first, settings, out, run_id=RUN_1)
    again = [PlanItem(make_request("fox", "a watercolour fox, at dusk", seed=4))]
    render(again, settings, out, run_id=RUN_2)
    failed = CatalogRecord(
        run_id=RUN_2,
        row_id="broken",
        request_key="ff" * 32,
        mode="generate",
        model="qwen-image-2.0",
        prompt="a forbidden thing",
        size=None,
        seed=5,
        status="moderated",
        error_code="DataInspectionFailed",
        error_message="the input may contain inappropriate content",
        attempts=1,
    )
    catalog.write_part(LocalStore(out), [failed], run_id=RUN_2, label="failed")
    return out


def test_selection_latest_of_every_row_or_one_run(dest: Path) -> None:
    store = LocalStore(dest)
    latest = select_rows(store)
    assert [(r["row_id"], r["image_index"]) for r in latest] == [
        ("broken", None),
        ("fox", 0),
        ("icons", 0),
        ("icons", 1),
        ("zh", 0),
    ]
    assert next(r for r in latest if r["row_id"] == "fox")["run_id"] == RUN_2
    assert {r["row_id"] for r in select_rows(store, run=RUN_1)} == {"fox", "icons", "zh"}
    assert {r["row_id"] for r in select_rows(store, run="latest")} == {"fox", "broken"}
    icons = select_rows(store, filters=parse_filters(["tag.kind=icon"]))
    assert [r["image_index"] for r in icons] == [0, 1]
    with pytest.raises(ConfigError, match="no run"):
        select_rows(store, run="20990101T000000Z-nope")


def dominant(image: Image.Image) -> tuple[int, int, int]:
    counts = image.convert("RGB").getcolors(image.width * image.height) or []
    return max(counts)[1]


def close(a: tuple[int, ...], b: tuple[int, ...], tolerance: int = 18) -> bool:
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) <= tolerance


def test_sheet_lays_thumbnails_on_the_grid_in_order(dest: Path) -> None:
    layout = Layout(columns=3, tile=150, padding=10)
    sheet = make_contact_sheet(LocalStore(dest), layout=layout, title="test")
    assert (sheet.shown, sheet.matched) == (5, 5)
    assert [t.caption_id for t in sheet.tiles] == ["broken", "fox", "icons #1", "icons #2", "zh"]
    page = sheet.image
    assert page.width == 3 * (150 + 10) + 10
    rows = select_rows(LocalStore(dest))
    header_h = header_height(layout, subtitle=True)
    caption_h = round(layout.id_size * 1.5) + round(layout.prompt_size * 1.35) * 2 + 5
    for number, row in enumerate(rows):
        x = 10 + (number % 3) * 160
        y = header_h + (number // 3) * (150 + caption_h + 10)
        box = page.crop((x + 20, y + 20, x + 130, y + 130))
        if row["status"] == "moderated":
            assert close(dominant(box), (236, 233, 230), 6)  # the grey "no image" tile
        else:
            assert close(dominant(box), colour(row["prompt"], row["seed"], row["image_index"]))


def test_sheet_limit_leaves_a_note(dest: Path) -> None:
    sheet = make_contact_sheet(LocalStore(dest), limit=2)
    assert (sheet.shown, sheet.matched) == (2, 5)
    assert sheet.png().startswith(b"\x89PNG")


def test_contact_sheet_command(dest: Path, tmp_path: Path) -> None:
    out = tmp_path / "sheet.png"
    result = runner.invoke(
        app,
        [
            "contact-sheet",
            str(dest),
            "-o",
            str(out),
            "--filter",
            "status=succeeded",
            "--columns",
            "2",
            "--tile",
            "96",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "4 tiles" in result.output
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.width == max(2 * (96 + 12) + 12, 480)

    bad = runner.invoke(app, ["contact-sheet", str(dest), "-o", str(out), "--filter", "nope"])
    assert bad.exit_code == 2
    assert "bad filter" in bad.output
    missing = runner.invoke(app, ["contact-sheet", str(dest), "-o", str(out), "--run", "x"])
    assert missing.exit_code == 2
    assert "no run 'x'" in missing.output


def test_sheet_of_an_empty_destination(tmp_path: Path) -> None:
    sheet = make_contact_sheet(LocalStore(tmp_path))
    assert sheet.shown == 0
    with Image.open(io.BytesIO(sheet.png())) as image:
        assert image.width >= 480
