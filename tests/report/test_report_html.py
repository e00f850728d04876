"""The HTML report: its content, its self-containment, and what headless Chromium shows."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from render_helpers import engine_settings, make_request, render
from typer.testing import CliRunner

from qwbatch.catalog import table as catalog
from qwbatch.cli import app
from qwbatch.core.types import CatalogRecord, PlanItem
from qwbatch.manifest import Reject, rejects_table
from qwbatch.report.html import render_html_report
from qwbatch.simulator.render import colour
from qwbatch.storage.stores import LocalStore

runner = CliRunner()
RUN = "20260301T000000Z-cccccc"
EVIL = 'a "quoted" <script>alert(1)</script> & more'


@pytest.fixture
def dest(sim, tmp_path: Path) -> Path:
    """One run: three stored images (one request n=2), a failure, and a rejected row."""
    settings = engine_settings(sim)
    out = tmp_path / "dest"
    items = [
        PlanItem(make_request("fox", "a watercolour fox", seed=11, tags=(("campaign", "kids"),))),
        PlanItem(
            make_request(
                "duo",
                EVIL,
                n=2,
                seed=12,
                model="qwen-image-2.0-pro",
                tags=(("campaign", "kids"), ("kind", "pair")),
            )
        ),
    ]
    render(items, settings, out, run_id=RUN)
    store = LocalStore(out)
    failed = CatalogRecord(
        run_id=RUN,
        row_id="broken",
        request_key="ee" * 32,
        mode="generate",
        model="qwen-image-2.0",
        prompt="a forbidden thing",
        size="512*512",
        seed=5,
        status="failed",
        error_code="InvalidParameter",
        error_message="size 9*9 is not supported <here>",
        attempts=1,
    )
    catalog.write_part(store, [failed], run_id=RUN, label="failed")
    rejects = rejects_table([Reject(7, "too-big", "size", "size 4096*4096 is too large")])
    catalog.write_rejects(store, rejects, run_id=RUN)
    return out


def test_report_holds_totals_failures_rejects_and_every_image(dest: Path) -> None:
    html = render_html_report(LocalStore(dest), RUN)
    assert html.startswith("<!doctype html>")
    # Totals: 3 images stored, 1 failed row; by model and by tag.
    assert "<b>3</b><span>images</span>" in html
    assert "<b>1</b><span>failed</span>" in html
    assert re.search(r"<td>qwen-image-2\.0-pro</td><td class=num>2</td><td class=num>2</td>", html)
    assert re.search(r"<td>campaign=kids</td><td class=num>3</td><td class=num>3</td>", html)
    assert "<td>kind=pair</td>" in html
    # The failure with its reason, and the rejected manifest row.
    assert "<td>InvalidParameter</td><td>size 9*9 is not supported &lt;here&gt;</td>" in html
    assert "<td>too-big</td><td>size</td><td>size 4096*4096 is too large</td>" in html
    # Every stored image inlined; ids, numbering of n>1 requests.
    assert html.count('src="data:image/webp;base64,') == 3
    for label in ("fox", "duo #1", "duo #2", "broken"):
        assert f"<b>{label}</b>" in html
    # Catalog text is escaped, and the page loads nothing from anywhere.
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", html)
    assert "default-src 'none'" in html


def test_report_of_the_latest_run_and_a_cap_on_images(dest: Path) -> None:
    html = render_html_report(LocalStore(dest), "latest", max_images=1)
    assert html.count("<figure>") == 1
    assert "… and 3 more rows not shown" in html
    assert f"run {RUN}" in html


def test_report_command_writes_the_page(dest: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(dest), "--html", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8").count("<figure>") == 4
    # Without --html the same command prints the terminal report of the same catalog.
    terminal = runner.invoke(app, ["report", str(dest)])
    assert terminal.exit_code == 0, terminal.output
    assert "overview" in terminal.output


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(page: Path, png: Path, profile: Path) -> None:
    subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--window-size=1200,1600",
            f"--screenshot={png}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def pixels_near(image: Image.Image, rgb: tuple[int, int, int], tolerance: int = 12) -> int:
    """How many pixels are within ``tolerance`` (per channel) of ``rgb``."""
    bands = image.convert("RGB").split()
    masks = [
        band.point(lambda v, c=c: 255 if abs(v - c) <= tolerance else 0)
        for band, c in zip(bands, rgb, strict=True)
    ]
    combined = masks[0]
    for mask in masks[1:]:
        combined = Image.composite(mask, Image.new("L", mask.size, 0), combined)
    return combined.histogram()[255]


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (.ci/run installs it)"
)
def test_chromium_shows_the_images_from_disk(dest: Path, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html_report(LocalStore(dest), RUN), encoding="utf-8")
    png = tmp_path / "shot.png"
    screenshot(page, png, tmp_path / "profile")
    with Image.open(png) as shot:
        shot.load()
    rows = [("fox", "a watercolour fox", 11, 0), ("duo", EVIL, 12, 0), ("duo", EVIL, 12, 1)]
    for row_id, prompt, seed, index in rows:
        tint = colour(prompt, seed, index)
        # A 220-pixel-high thumbnail of a flat image shows thousands of pixels of its colour.
        assert pixels_near(shot, tint) > 5000, (row_id, index, tint)
    # A colour that is in no image is (nearly) absent: the count means something.
    assert pixels_near(shot, (255, 0, 255)) < 50
