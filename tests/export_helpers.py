"""A small rendered DEST for export tests: the simulator's images, a local run, no Prefect."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from local_run import render_all
from support import engine_settings

from qwbatch.core.settings import Settings
from qwbatch.simulator import SimulatorHandle

#: Rows of the export manifest: id, prompt, n, size, tags. ``a/b`` needs a safe file name.
ROWS = [
    ("cat", "a cat on a mat", 1, "512*512", {"caption": "cat, sitting", "split": "train"}),
    ("dog", "a dog in the rain", 2, "768*512", {"caption": "dog", "split": "test"}),
    ("owl.v2", "an owl at night", 1, "512*768", {"caption": "owl", "split": "train"}),
    ("a/b", "a lighthouse, oil painting", 1, "512*512", {"caption": "lighthouse"}),
    ("fox", "a fox in snow", 1, "640*640", {"caption": "fox", "split": "test"}),
    ("bee", "a bee on a flower", 1, "512*512", {"caption": "bee", "split": "train"}),
]
#: Images the manifest makes (a row per image in the export).
IMAGES = sum(n for _, _, n, _, _ in ROWS)


def write_manifest(path: Path, rows: list[tuple[str, str, int, str, dict[str, str]]]) -> Path:
    pq.write_table(
        pa.table(
            {
                "id": [r[0] for r in rows],
                "prompt": [r[1] for r in rows],
                "n": pa.array([r[2] for r in rows], pa.int32()),
                "size": [r[3] for r in rows],
                "tags": pa.array(
                    [list(r[4].items()) for r in rows], pa.map_(pa.string(), pa.string())
                ),
            }
        ),
        path,
    )
    return path


def render_dest(
    simulator: SimulatorHandle, folder: Path, out: str, **overrides: object
) -> Settings:
    """Render :data:`ROWS` into ``out`` with the simulator's fast images; the settings used."""
    simulator.reset(restore_config=True)
    simulator.configure(fast=True)
    settings = engine_settings(simulator, **overrides)
    summary = render_all(write_manifest(folder / "m.parquet", ROWS), out, settings)
    assert summary.statuses == {"succeeded": IMAGES}, summary.statuses
    return settings
