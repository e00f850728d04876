"""The README's contact sheet is the one the demo draws: render the demo manifests (the
generation demo, then the edit demo) as ``make demo`` does and compare the sheet with
``docs/contact-sheet.png``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat

from qwbatch.cli.run import DEMO_MISSPELL_RATE, DEMO_SIMULATOR_SEED
from qwbatch.core.settings import Settings
from qwbatch.report.contact_sheet import make_contact_sheet
from qwbatch.runs import runner
from qwbatch.storage.stores import LocalStore

ROOT = Path(__file__).parents[2]
DOCS_SHEET = ROOT / "docs" / "contact-sheet.png"
DEMOS = [ROOT / "manifests" / "demo.parquet", ROOT / "manifests" / "edit-demo.parquet"]


def demo_title() -> str:
    """The title the Makefile gives the demo's sheet."""
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"^DEMO_SHEET_TITLE := (.+)$", makefile, re.MULTILINE)
    assert match, "Makefile lacks DEMO_SHEET_TITLE"
    return match.group(1).strip()


def test_readme_shows_the_docs_sheet_and_make_demo_draws_it() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](docs/contact-sheet.png)" in readme
    makefile = (ROOT / "Makefile").read_text()
    assert "qwbatch contact-sheet out -o out/contact-sheet.png" in makefile
    assert "cp out/contact-sheet.png docs/contact-sheet.png" in makefile


@pytest.mark.slow
def test_docs_sheet_is_what_the_demo_draws(sim, tmp_path: Path) -> None:
    # The demo's simulator: the same images misspelt, so the same re-rolls.
    sim.configure(
        api_key="sk-demo-sheet-test", misspell_rate=DEMO_MISSPELL_RATE, seed=DEMO_SIMULATOR_SEED
    )
    settings = Settings(
        dashscope_base_url=sim.base_url,
        dashscope_api_key="sk-demo-sheet-test",
        poll_interval_s=0.02,
        poll_max_interval_s=0.05,
        rps=500,
        max_in_flight=16,
    )
    out = tmp_path / "out"
    for number, demo in enumerate(DEMOS):
        run_id = f"20260101T00000{number}Z-demo0{number}"
        plan = runner.plan(str(demo), str(out), settings=settings, run_id=run_id)
        for shard in plan.shard_keys:
            runner.render_shard(
                shard,
                out=str(out),
                run_id=plan.run_id,
                manifest_dir=str(demo.parent),
                settings=settings,
            )
    assert all(path.name in demo_title() for path in DEMOS), "the title names every manifest"
    drawn = make_contact_sheet(LocalStore(out), title=demo_title()).image
    with Image.open(DOCS_SHEET) as committed:
        committed = committed.convert("RGB")
    assert drawn.size == committed.size, "docs/contact-sheet.png is stale: run `make docs`"
    # Identical where fonts and codecs match; a hand-edited or stale sheet differs by far more.
    mean = ImageStat.Stat(ImageChops.difference(drawn.convert("RGB"), committed)).mean
    assert max(mean) < 2.0, f"docs/contact-sheet.png differs from the demo's ({mean}): make docs"
