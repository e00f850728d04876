"""Write ``manifests/demo.parquet``: about two dozen rows that show what qwbatch does.

Run ``python manifests/make_demo.py``; the output is deterministic and committed.
Product shots, a poster with English and Chinese text, slides, comic panels, several models
(rows with ``expected_text`` have their words read back, and misspelt images re-rolled)
(including the async-capable qwen-image-plus), two rows that ask for the same image (rendered
once), and one bad row that lands in the rejects file.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).parent

PRODUCTS = [
    ("ceramic pour-over coffee dripper", "sku-1001"),
    ("matte black wireless earbuds with charging case", "sku-1002"),
    ("linen tote bag in sage green", "sku-1003"),
    ("stainless steel insulated water bottle", "sku-1004"),
    ("hand-thrown stoneware mug with blue glaze", "sku-1005"),
    ("minimalist oak desk lamp", "sku-1006"),
]

ROWS: list[dict[str, object]] = []
for i, (product, sku) in enumerate(PRODUCTS):
    ROWS.append(
        {
            "id": f"product-{i + 1:02d}",
            "prompt": f"Studio product photo of a {product} on a seamless warm grey background, "
            "soft box lighting, subtle shadow, 50mm lens",
            "model": "qwen-image-2.0",
            "size": "1024*1024",
            "negative_prompt": "blurry, watermark, extra objects",
            "tags": {"campaign": "autumn-catalog", "sku": sku, "kind": "product"},
        }
    )

ROWS += [
    {
        "id": "poster-en-zh",
        "prompt": 'A bold festival poster with the headline "Lantern Night Market" and the '
        'Chinese title "灯笼夜市" in large brush calligraphy, red and gold, '
        "paper lanterns, date line 'Sat 12 Dec'",
        "model": "qwen-image-2.0-pro",
        "size": "928*1664",
        "n": 2,
        "tags": {"campaign": "lantern-night", "kind": "poster"},
        # Text checks: each image is read back (OCR), a misspelt one re-rendered.
        "expected_text": ["Lantern Night Market", "灯笼夜市"],
    },
    {
        "id": "poster-zh",
        "prompt": "极简风格海报，标题“秋季新品”，副标题“全场八折”，米色背景，细线条插画",
        "model": "qwen-image-2.0",
        "size": "1024*1536",
        "tags": {"campaign": "autumn-catalog", "kind": "poster"},
        "expected_text": ["秋季新品", "全场八折"],
    },
    {
        "id": "slide-q3",
        "prompt": 'A clean presentation slide titled "Q3 Results" with three bar charts '
        "labelled Revenue, Users and Retention, corporate blue palette",
        "model": "qwen-image-max",
        "size": "1664*928",
        "tags": {"campaign": "board-deck", "kind": "slide"},
    },
    {
        "id": "slide-roadmap",
        "prompt": 'A presentation slide titled "Roadmap 2027" showing a timeline with four '
        "milestones: Beta, Launch, Scale, Global",
        "model": "qwen-image-plus",
        "size": "1664*928",
        "tags": {"campaign": "board-deck", "kind": "slide"},
    },
    {
        "id": "comic-1",
        "prompt": "Comic panel, ink and flat colours: a small robot finds a glowing seed in a "
        'city garden, speech bubble "What are you?"',
        "model": "qwen-image",
        "size": "1328*1328",
        "seed": 7,
        "tags": {"campaign": "robot-comic", "kind": "comic"},
    },
    {
        "id": "comic-2",
        "prompt": "Comic panel, ink and flat colours: the robot waters the seed, which has grown "
        'into a sapling, speech bubble "Grow!"',
        "model": "qwen-image",
        "size": "1328*1328",
        "seed": 7,
        "tags": {"campaign": "robot-comic", "kind": "comic"},
    },
    {
        "id": "banner-wide",
        "prompt": "Wide website hero banner of misty mountains at sunrise with the words "
        '"Find your quiet" in elegant serif type',
        "model": "qwen-image-2.0",
        "size": "2048*1024",
        "tags": {"campaign": "web", "kind": "banner"},
        "expected_text": ["Find your quiet"],
    },
    {
        "id": "icon-set",
        "prompt": "Four flat line icons on white: cloud, lock, lightning bolt, leaf; 2px strokes",
        "model": "qwen-image-2.0",
        "size": "768*768",
        "n": 3,
        "tags": {"campaign": "web", "kind": "icon"},
    },
    {
        "id": "menu-card",
        "prompt": 'A café menu card with the items "Flat white 4.50", "Matcha latte 5.00" and '
        '"Croissant 3.20", hand-lettered on a chalkboard',
        "model": "qwen-image-2.0",
        "size": "1024*1280",
        "tags": {"campaign": "cafe", "kind": "print"},
        "expected_text": ["Flat white 4.50", "Matcha latte 5.00", "Croissant 3.20"],
    },
    {
        "id": "book-cover",
        "prompt": 'A science-fiction book cover titled "The Quiet Orbit" by "A. N. Writer", '
        "a lone satellite over a violet planet",
        "model": "qwen-image-2.0-pro",
        "size": "1024*1536",
        "tags": {"campaign": "books", "kind": "cover"},
    },
    {
        "id": "infographic",
        "prompt": 'An infographic titled "How tea is made" with five numbered steps: pluck, '
        "wither, roll, oxidise, dry, with small illustrations",
        "model": "qwen-image-2.0",
        "size": "1024*1792",
        "tags": {"campaign": "education", "kind": "infographic"},
    },
    # Two rows asking for exactly the same image: rendered once, both recorded.
    {
        "id": "dup-a",
        "prompt": "A watercolour fox curled asleep under a maple tree, autumn leaves",
        "model": "qwen-image-2.0",
        "size": "1024*1024",
        "seed": 1234,
        "tags": {"campaign": "kids-book", "kind": "illustration"},
    },
    {
        "id": "dup-b",
        "prompt": "A watercolour fox curled asleep under a maple tree, autumn leaves",
        "model": "qwen-image-2.0",
        "size": "1024x1024",
        "seed": 1234,
        "tags": {"campaign": "kids-book", "kind": "illustration", "variant": "b"},
    },
    {
        "id": "sticker",
        "prompt": "A cute sticker of a cat astronaut waving, thick white outline",
        "model": "qwen-image-2.0",
        "size": "1024*1024",
        "tags": {"campaign": "merch", "kind": "sticker"},
    },
    {
        "id": "pattern",
        "prompt": "Seamless repeating pattern of lemons and leaves on pale blue",
        "model": "qwen-image-2.0",
        "size": "1024*1024",
        "watermark": True,
        "tags": {"campaign": "merch", "kind": "pattern"},
    },
    # A bad row: 4096*4096 is beyond qwen-image-2.0's 2048*2048 pixel limit → rejects file.
    {
        "id": "too-big",
        "prompt": "An enormous mural of a city skyline at night",
        "model": "qwen-image-2.0",
        "size": "4096*4096",
        "tags": {"campaign": "web", "kind": "mural"},
    },
]

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("mode", pa.string()),
        ("model", pa.string()),
        ("negative_prompt", pa.string()),
        ("size", pa.string()),
        ("n", pa.int32()),
        ("seed", pa.int64()),
        ("prompt_extend", pa.bool_()),
        ("watermark", pa.bool_()),
        ("input_images", pa.list_(pa.string())),
        ("tags", pa.map_(pa.string(), pa.string())),
        ("expected_text", pa.list_(pa.string())),
    ]
)


def build() -> pa.Table:
    columns: dict[str, list[object]] = {name: [] for name in SCHEMA.names}
    for row in ROWS:
        for name in SCHEMA.names:
            value = row.get(name)
            if name == "mode":
                value = value or "generate"
            if name == "tags" and value is not None:
                value = list(value.items())  # type: ignore[attr-defined]
            columns[name].append(value)
    return pa.table(columns, schema=SCHEMA)


if __name__ == "__main__":
    out = HERE / "demo.parquet"
    pq.write_table(build(), out)
    print(f"wrote {out} ({len(ROWS)} rows)")
