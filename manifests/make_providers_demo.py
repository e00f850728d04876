"""Write ``manifests/providers-demo.parquet``: a few rows rendered on Qwen-Image, FLUX and
GPT Image side by side (the ``models`` column), plus one edit on each.

Run ``python manifests/make_providers_demo.py``; the output is deterministic and committed.
``qwbatch demo`` renders it against the three bundled simulators, then draws the compare
sheet (``qwbatch compare``).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).parent
MODELS = ["qwen-image-2.0", "flux-2-pro", "gpt-image-2"]

ROWS: list[dict[str, object]] = [
    {
        "id": "shop-sign",
        "prompt": 'A hand-painted wooden shop sign that says "OPEN DAILY" above a bakery door',
        "size": "1024*1024",
        "models": MODELS,
        "tags": {"expected_text": "OPEN DAILY"},
    },
    {
        "id": "poster-zh",
        "prompt": "极简风格海报，标题“秋季新品”，米色背景，留白",
        "size": "1024*1536",
        "models": MODELS,
        "tags": {"expected_text": "秋季新品"},
    },
    {
        "id": "product",
        "prompt": "Studio product photo of a stoneware mug with blue glaze on warm grey",
        "size": "1024*1024",
        "models": MODELS,
        "params": None,
        "tags": {},
    },
    {
        "id": "edit-recolour",
        "prompt": "Make the sneaker forest green, keep everything else",
        "mode": "edit",
        "size": "1024*1024",
        "input_images": ["edit-inputs/sneaker.png"],
        "models": MODELS,
        "tags": {},
    },
]

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("prompt", pa.string()),
        pa.field("mode", pa.string()),
        pa.field("size", pa.string()),
        pa.field("input_images", pa.list_(pa.string())),
        pa.field("models", pa.list_(pa.string())),
        pa.field("params", pa.string()),
        pa.field("tags", pa.map_(pa.string(), pa.string())),
    ]
)


def main() -> None:
    rows = [{name: row.get(name) for name in SCHEMA.names} for row in ROWS]
    for row in rows:
        row["tags"] = list((row["tags"] or {}).items())
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), HERE / "providers-demo.parquet")


if __name__ == "__main__":
    main()
