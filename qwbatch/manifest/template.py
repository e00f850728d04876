"""An annotated example manifest to start from: ``qwbatch manifest template``.

The template is a CSV (or JSON Lines) file whose leading ``#`` lines describe every column,
followed by example rows that a run accepts as they are; ``qwbatch manifest from-csv``
skips the notes. :data:`COLUMNS` is the one list of columns with their meaning and example;
the README's manifest table says the same at more length (a test keeps the names in step).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any, Final, Literal

from qwbatch.manifest.columns import EXPECTED_TEXT_SEPARATOR

TemplateFormat = Literal["csv", "jsonl"]


@dataclass(frozen=True, slots=True)
class ColumnDoc:
    """One manifest column: whether it is required (or its default), meaning, a cell example."""

    name: str
    default: str
    meaning: str
    example: str


COLUMNS: Final[tuple[ColumnDoc, ...]] = (
    ColumnDoc("id", "required", "unique row id; names the output in the catalog", "sku-1001-hero"),
    ColumnDoc("prompt", "required", "what to draw, or the edit instruction", "A ceramic mug"),
    ColumnDoc("mode", "generate", "generate or edit", "generate"),
    ColumnDoc("model", "qwen-image-2.0", "a model from the model table", "qwen-image-2.0-pro"),
    ColumnDoc("negative_prompt", "none", "what to avoid (at most 500 characters)", "blurry"),
    ColumnDoc("size", "model default", "W*H in pixels, checked against the model", "1024*1536"),
    ColumnDoc("n", "1", "images per request (1-6 on the 2.0 and edit-plus/max models)", "2"),
    ColumnDoc("seed", "derived", "0-2147483647; empty: derived so reruns reproduce", "42"),
    ColumnDoc("prompt_extend", "provider", "let the provider rewrite the prompt", "false"),
    ColumnDoc("watermark", "false", "add the provider's Qwen-Image mark", "false"),
    ColumnDoc(
        "input_images",
        "none",
        "edits: 1-3 images, relative to the Parquet file's folder; one path or a JSON array",
        '["shoes.png"]',
    ),
    ColumnDoc("tags", "none", "labels for reports: k=v,k2=v2 or a JSON object", "campaign=autumn"),
    ColumnDoc(
        "priority", "none", "with --budget-mode trim, higher renders first; not in the key", "10"
    ),
    ColumnDoc(
        "params",
        "none",
        "provider parameters the model table allows (quality, safety_tolerance...): JSON object",
        '{"quality": "low"}',
    ),
    ColumnDoc(
        "models",
        "model",
        "render the row on each of these models (ids become ID@MODEL); comma-separated",
        "qwen-image-2.0,flux-2-pro,gpt-image-2",
    ),
    ColumnDoc(
        "expected_text",
        "none",
        "words that must be legible on each image (OCR-checked); several split by |",
        "秋季新品|全场八折",
    ),
)

#: Example rows a run accepts (no edits: those need input files that the template cannot ship).
EXAMPLES: Final[tuple[dict[str, Any], ...]] = (
    {"id": "mug-hero", "prompt": "Studio photo of a ceramic mug on warm grey, soft light"},
    {
        "id": "poster-autumn",
        "prompt": 'Autumn sale poster with the headline "Up to 20% off", maple leaves',
        "mode": "generate",
        "model": "qwen-image-2.0-pro",
        "negative_prompt": "blurry, watermark",
        "size": "1024*1536",
        "n": 2,
        "seed": 42,
        "prompt_extend": False,
        "watermark": False,
        "tags": {"campaign": "autumn", "kind": "poster"},
    },
    {
        "id": "poster-zh",
        "prompt": "极简风格海报，标题“秋季新品”，副标题“全场八折”，米色背景",
        "model": "qwen-image-2.0",
        "size": "1024*1536",
        "tags": {"campaign": "autumn", "lang": "zh"},
        "expected_text": ["秋季新品", "全场八折"],
    },
)

_EDIT_EXAMPLE: Final = {
    "id": "shoes-recolour",
    "prompt": "Make the shoes in Image 1 forest green",
    "mode": "edit",
    "model": "qwen-image-edit-plus",
    "input_images": ["shoes.png"],
}


def _notes(convert: str) -> list[str]:
    width = max(len(c.name) for c in COLUMNS)
    notes = [
        "qwbatch manifest template: one row per render request. Lines starting with # are",
        f"notes and are skipped. Convert it with: {convert}",
        "",
        "Columns (empty cell = the default in brackets):",
    ]
    notes += [f"  {c.name:<{width}}  [{c.default}] {c.meaning}; e.g. {c.example}" for c in COLUMNS]
    notes += [
        "",
        "An edit row (needs shoes.png beside the Parquet file, so it is only a note here):",
        "  " + json.dumps(_EDIT_EXAMPLE, ensure_ascii=False),
    ]
    return notes


def template_text(fmt: TemplateFormat = "csv") -> str:
    """The annotated template as text, in ``fmt`` (``csv`` or ``jsonl``)."""
    if fmt == "jsonl":
        notes = _notes("qwbatch manifest from-jsonl FILE.jsonl -o manifest.parquet")
        lines = [f"# {note}".rstrip() for note in notes]
        lines += [json.dumps(row, ensure_ascii=False) for row in EXAMPLES]
        return "\n".join(lines) + "\n"
    notes = _notes("qwbatch manifest from-csv FILE.csv -o manifest.parquet")
    out = io.StringIO()
    out.write("".join(f"# {note}".rstrip() + "\n" for note in notes))
    writer = csv.writer(out, lineterminator="\n")
    names = [c.name for c in COLUMNS]
    writer.writerow(names)
    for row in EXAMPLES:
        writer.writerow([_csv_cell(row.get(name), name) for name in names])
    return out.getvalue()


def _csv_cell(value: Any, name: str) -> str:
    if value is None:
        return ""
    if name == "expected_text" and isinstance(value, list):
        return EXPECTED_TEXT_SEPARATOR.join(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
