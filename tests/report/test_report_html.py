"""The HTML report: its content, its self-containment, and what headless Chromium shows."""

from __future__ import annotations

import base64
import datetime as dt
import io
import re
import shutil
import urllib.request
from pathlib import Path
from urllib.parse import unquote

import pytest
from chromium import CHROMIUM, screenshot
from fontTools.ttLib import TTFont
from PIL import Image, ImageChops
from render_helpers import render
from support import engine_settings, make_request
from typer.testing import CliRunner

from qwbatch.catalog import table as catalog
from qwbatch.cli import app
from qwbatch.core.errors import ConfigError
from qwbatch.core.types import CatalogRecord, PlanItem
from qwbatch.manifest import Reject, rejects_table
from qwbatch.report.html import render_html_report
from qwbatch.report.links import link_maker
from qwbatch.simulator.render import colour
from qwbatch.storage.stores import LocalStore, S3Store

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


def test_each_card_links_its_full_size_image_relative_to_the_page(dest: Path, tmp_path) -> None:
    page = tmp_path / "pages" / "report.html"
    page.parent.mkdir()
    result = runner.invoke(app, ["report", str(dest), "--html", str(page)])
    assert result.exit_code == 0, result.output
    hrefs = re.findall(r'<a href="([^"]+)"', page.read_text(encoding="utf-8"))
    assert len(hrefs) == 3  # the three stored images; the failed row has none
    for href in hrefs:
        assert not href.startswith(("/", "file:", "http"))
        target = (page.parent / unquote(href)).resolve()
        assert target.is_relative_to(dest.resolve())
        assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Moved together, page and DEST keep working: links are relative.
    none = runner.invoke(app, ["report", str(dest), "--html", str(page), "--links", "none"])
    assert none.exit_code == 0, none.output
    assert "<a href" not in page.read_text(encoding="utf-8")


def test_s3_links_are_presigned_or_public(s3_client, s3_bucket: str) -> None:
    store = S3Store(s3_client, s3_bucket, "dest")
    store.put("images/ab/abcd/0.png", b"\x89PNG full size", content_type="image/png")
    link = link_maker(store, mode="presigned", expires_s=600)
    assert link is not None
    url = link("images/ab/abcd/0.png")
    assert "Signature" in url or "X-Amz-Signature" in url
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 (the moto server)
        assert answer.read() == b"\x89PNG full size"
    public = link_maker(store, base_url="https://cdn.example.com/dest/")
    assert public is not None
    assert public("images/ab/abcd/0.png") == "https://cdn.example.com/dest/images/ab/abcd/0.png"
    with pytest.raises(ConfigError, match="local DEST"):
        link_maker(store, mode="relative", page_dir=Path())
    assert link_maker(store) is None  # auto: nothing to link an S3 page to without a choice


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


ZH = "灯笼夜市，红色的海报"


def zh_page(tmp_path: Path, prompt: str, *, embed_font: bool) -> str:
    """The page of a one-row catalog whose prompt is ``prompt`` (no image: text only)."""
    out = tmp_path / "zh-dest"  # one path: pages differ by their prompt alone
    shutil.rmtree(out, ignore_errors=True)
    record = CatalogRecord(
        run_id=RUN,
        row_id="lantern",
        request_key="dd" * 32,
        mode="generate",
        model="qwen-image-2.0",
        prompt=prompt,
        size="1328*1328",
        seed=8,
        status="moderated",
        error_code="DataInspectionFailed",
        attempts=1,
    )
    store = LocalStore(out)
    catalog.write_part(store, [record], run_id=RUN, label="zh")
    when = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    return render_html_report(store, RUN, generated_at=when, embed_font=embed_font)


def test_page_embeds_a_font_with_every_character_it_shows(tmp_path: Path) -> None:
    html = zh_page(tmp_path, ZH, embed_font=True)
    assert "font-src data:" in html
    match = re.search(r"src:url\(data:font/otf;base64,([A-Za-z0-9+/=]+)\)", html)
    assert match, "no embedded font"
    assert len(match.group(1)) < 300_000  # a subset, not the 30 MB collection
    font = TTFont(io.BytesIO(base64.b64decode(match.group(1))))
    cmap = font.getBestCmap()
    assert all(ord(char) in cmap for char in ZH + "qwbatch report")
    assert ord("鼠") not in cmap  # only the page's characters
    assert "font-src" not in zh_page(tmp_path, ZH, embed_font=False).split("</head>")[1]


INK = (34, 34, 34)  # the page's text colour
NO_FONTS_CONF = """<?xml version="1.0"?>
<!DOCTYPE fontconfig SYSTEM "fonts.dtd">
<fontconfig><cachedir>{cache}</cachedir></fontconfig>
"""


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (.ci/run installs it)"
)
def test_chromium_without_any_system_font_draws_chinese_from_the_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fontconfig that knows no font folder: Chromium has no system font at all, CJK or other.
    conf = tmp_path / "fonts.conf"
    conf.write_text(NO_FONTS_CONF.format(cache=tmp_path / "fc-cache"), encoding="utf-8")
    monkeypatch.setenv("FONTCONFIG_FILE", str(conf))

    def shot(prompt: str, *, embed_font: bool) -> Image.Image:
        name = f"{len(list(tmp_path.glob('*.html')))}"
        page = tmp_path / f"{name}.html"
        page.write_text(zh_page(tmp_path, prompt, embed_font=embed_font), encoding="utf-8")
        png = tmp_path / f"{name}.png"
        screenshot(page, png, tmp_path / f"profile-{name}")
        with Image.open(png) as image:
            return image.convert("RGB")

    # The same characters in another order: tofu boxes would look the same, glyphs do not.
    reordered = ZH[::-1]
    first, second = shot(ZH, embed_font=True), shot(reordered, embed_font=True)
    for image in (first, second):
        assert pixels_near(image, INK, 60) > 2000, "no text drawn"
    assert ImageChops.difference(first, second).getbbox() is not None, "no distinct glyphs"
    without = ImageChops.difference(shot(ZH, embed_font=False), shot(reordered, embed_font=False))
    assert without.getbbox() is None, (
        "Chromium found a CJK font of its own: the test proves nothing"
    )
