"""End to end: ``qwbatch run`` shows progress, stores thumbnails and a contact sheet, and
publishes the summary with the sheet as a Prefect Markdown artifact."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from qwbatch.cli import app

runner = CliRunner()
RUN = "20260401T000000Z-dddddd"


@pytest.mark.slow
@pytest.mark.usefixtures("sim_env")
def test_run_shows_progress_and_publishes_its_contact_sheet(
    prefect_server, sim, tmp_path: Path
) -> None:
    manifest = tmp_path / "m.parquet"
    pq.write_table(
        pa.table(
            {
                "id": ["kite", "pair", "zh"],
                "prompt": ["a red kite", "two blue kites", "灯笼夜市海报"],
                "size": ["512*512", "512*512", "512*768"],
                "n": [1, 2, 1],
            }
        ),
        manifest,
    )
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(manifest), "--out", str(out), "--run-id", RUN])
    assert result.exit_code == 0, result.output

    # Not a terminal: plain progress lines, the last one complete.
    progress = [line for line in result.output.splitlines() if line.startswith("progress:")]
    assert progress, result.output
    assert progress[-1].startswith("progress: 4/4 images made, 100% done, ")
    assert progress[-1].endswith(" of est. 0.1400 USD, ETA 0 s, 0 failed")
    assert "spent 0.1400" in progress[-1]

    # Thumbnails beside the outputs, and the run's sheet in DEST, named in the summary.
    assert len(list((out / "thumbs").rglob("*.webp"))) == 4
    sheet = out / "runs" / RUN / "contact-sheet.png"
    with Image.open(sheet) as image:
        assert image.format == "PNG"
    assert f"contact sheet: {sheet.as_uri()}" in result.output
    summary = json.loads((out / "runs" / RUN / "summary.json").read_text())
    assert summary["contact_sheet_uri"] == sheet.as_uri()

    # The Prefect artifact: the summary, and the sheet's preview inline as a data URI.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["render-summary"]))
        )
    (artifact,) = [a for a in artifacts if RUN in str(a.data)]
    assert artifact.type == "markdown"
    markdown = str(artifact.data)
    assert f"Full size: `{sheet.as_uri()}`" in markdown
    match = re.search(r"!\[[^\]]*\]\(data:image/jpeg;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert match, markdown[:500]
    with Image.open(io.BytesIO(base64.b64decode(match.group(1)))) as preview:
        assert preview.format == "JPEG"
        assert preview.width <= 900

    # --quiet: no progress at all (the rerun renders nothing new).
    quiet = runner.invoke(app, ["run", str(manifest), "--out", str(out), "--quiet"])
    assert quiet.exit_code == 0, quiet.output
    assert "progress:" not in quiet.output
    assert "nothing new to render" in quiet.output
