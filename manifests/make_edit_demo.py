"""Write ``manifests/edit-demo.parquet`` and its input images under ``manifests/edit-inputs/``.

Run ``python manifests/make_edit_demo.py``; the output is deterministic and committed.
``make demo`` renders it after ``demo.parquet``, into the same folder, because one row edits
an output of the generation demo (``catalog:product-01``).

What it shows, row by row: product edits of a JPEG and a PNG; a three-image composition in
"Image 1/2/3" order; the first frame of an animated GIF; a TIFF and a BMP (converted to PNG);
a thumbnail too small for the provider (scaled up to 384 px) and a panorama too large
(scaled down to 3072 px), each change recorded in the catalog's ``input_notes``; the same
mug photo under a second name (one request: inputs are known by content, not by name); a
chained edit of an earlier output; and two bad inputs (a truncated PNG and a text file named
``.png``) that land in the rejects file with their reasons, without a provider call.
"""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

HERE = Path(__file__).parent
INPUTS = HERE / "edit-inputs"
MODEL = "qwen-image-edit-plus"

RGB = tuple[int, int, int]


def _canvas(size: tuple[int, int], top: RGB, bottom: RGB) -> Image.Image:
    """A vertical gradient: a backdrop a person can tell apart from a flat fill."""
    width, height = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for y in range(height):
        t = y / max(1, height - 1)
        colour = tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        draw.line((0, y, width, y), fill=colour)
    return image


def mug() -> Image.Image:
    image = _canvas((1024, 768), (236, 228, 214), (182, 160, 132))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 560, 1024, 768), fill=(120, 86, 60))  # the table
    draw.ellipse((330, 520, 700, 600), fill=(90, 64, 44))  # its shadow
    draw.rectangle((380, 300, 640, 560), fill=(38, 84, 148))  # the mug
    draw.ellipse((380, 270, 640, 330), fill=(60, 110, 180))
    draw.ellipse((400, 280, 620, 320), fill=(70, 44, 30))  # coffee
    draw.ellipse((610, 350, 740, 490), outline=(38, 84, 148), width=24)  # handle
    return image


def sneaker() -> Image.Image:
    image = _canvas((900, 600), (250, 250, 250), (220, 224, 230))
    draw = ImageDraw.Draw(image)
    draw.polygon(
        [(150, 420), (220, 250), (420, 230), (560, 330), (760, 360), (780, 420)], fill=(214, 48, 49)
    )
    draw.rectangle((140, 420, 790, 460), fill=(245, 245, 245))  # the sole
    for x in range(300, 480, 45):
        draw.line((x, 260, x + 40, 300), fill=(255, 255, 255), width=8)  # laces
    return image


def room() -> Image.Image:
    image = _canvas((640, 480), (200, 205, 190), (160, 150, 130))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 344, 640, 480), fill=(150, 120, 90))  # floor
    draw.rectangle((72, 224, 336, 344), fill=(110, 120, 100))  # sofa
    draw.rectangle((400, 72, 560, 208), fill=(225, 235, 245), outline=(90, 90, 90), width=5)
    return image


def logo_frames() -> list[Image.Image]:
    frames = []
    for colour in [(20, 40, 90), (200, 160, 40), (150, 30, 60)]:
        frame = Image.new("RGB", (400, 400), (255, 255, 255))
        draw = ImageDraw.Draw(frame)
        draw.ellipse((60, 60, 340, 340), fill=colour)
        draw.rectangle((170, 120, 230, 280), fill=(255, 255, 255))
        frames.append(frame)
    return frames


def poster() -> Image.Image:
    image = _canvas((1200, 1600), (232, 214, 180), (200, 170, 130))
    draw = ImageDraw.Draw(image)
    draw.rectangle((120, 160, 1080, 700), fill=(170, 70, 50))
    for y in range(820, 1400, 90):
        draw.rectangle((160, y, 1040, y + 40), fill=(120, 100, 80))
    return image


def thumbnail() -> Image.Image:
    image = Image.new("RGB", (240, 180), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.line((20, 150, 120, 40, 220, 150), fill=(30, 30, 30), width=3)  # a mountain sketch
    draw.ellipse((170, 20, 210, 60), outline=(30, 30, 30), width=3)
    return image


def panorama() -> Image.Image:
    image = _canvas((4000, 1000), (120, 170, 230), (240, 210, 170))
    draw = ImageDraw.Draw(image)
    draw.polygon(
        [(0, 1000), (700, 420), (1500, 800), (2300, 380), (3200, 760), (4000, 500), (4000, 1000)],
        fill=(70, 90, 80),
    )
    return image


def save(image: Image.Image, name: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, **options)
    data = buffer.getvalue()
    (INPUTS / name).write_bytes(data)
    return data


def write_inputs() -> None:
    INPUTS.mkdir(exist_ok=True)
    mug_bytes = save(mug(), "mug.jpg", format="JPEG", quality=88)
    (INPUTS / "mug-copy.jpg").write_bytes(mug_bytes)  # same bytes, another name
    save(sneaker(), "sneaker.png", format="PNG")
    # A palette BMP: BMP has no compression Pillow writes, and the demo should stay small.
    save(room().quantize(64), "room.bmp", format="BMP")
    frames = logo_frames()
    save(
        frames[0],
        "logo.gif",
        format="GIF",
        save_all=True,
        append_images=frames[1:],
        duration=400,
        loop=0,
    )
    save(poster(), "poster-scan.tiff", format="TIFF", compression="tiff_deflate")
    save(thumbnail(), "thumbnail.png", format="PNG")
    save(panorama(), "panorama.webp", format="WEBP", quality=80)
    sneaker_png = (INPUTS / "sneaker.png").read_bytes()
    (INPUTS / "broken.png").write_bytes(sneaker_png[: len(sneaker_png) // 3])
    (INPUTS / "notes.png").write_text("shot list: mug, sneaker, room\n")


def row(row_id: str, prompt: str, inputs: list[str], **extra: object) -> dict[str, object]:
    return {
        "id": row_id,
        "prompt": prompt,
        "mode": "edit",
        "model": MODEL,
        "input_images": [f"edit-inputs/{i}" if not i.startswith("catalog:") else i for i in inputs],
        "seed": 11,
        **extra,
    }


ROWS: list[dict[str, object]] = [
    row(
        "mug-marble",
        "Put the mug from Image 1 on a white marble counter, soft morning light",
        ["mug.jpg"],
        size="1024*768",
        tags={"campaign": "autumn-catalog", "kind": "product"},
    ),
    # The same photo under another name, the same request: rendered once, recorded twice.
    row(
        "mug-marble-copy",
        "Put the mug from Image 1 on a white marble counter, soft morning light",
        ["mug-copy.jpg"],
        size="1024*768",
        tags={"campaign": "autumn-catalog"},
    ),
    row(
        "sneaker-studio",
        "Place the sneaker from Image 1 on a seamless pastel studio backdrop",
        ["sneaker.png"],
        tags={"campaign": "autumn-catalog", "kind": "product"},
    ),
    row(
        "room-set",
        "Put the mug from Image 1 and the sneaker from Image 2 into the living room "
        "from Image 3, on the floor by the sofa",
        ["mug.jpg", "sneaker.png", "room.bmp"],
        size="1024*768",
        tags={"campaign": "lifestyle", "kind": "composite"},
    ),
    row(
        "logo-navy-gold",
        "Recolour the logo in Image 1 in navy and gold",
        ["logo.gif"],
        size="1024*1024",
        tags={"campaign": "brand", "kind": "logo"},
    ),
    row(
        "poster-restore",
        "Restore the faded poster scan in Image 1: crisp edges, true colours",
        ["poster-scan.tiff"],
        size="768*1024",
        tags={"campaign": "archive", "kind": "poster"},
    ),
    row(
        "sketch-to-flat",
        "Turn the small sketch in Image 1 into a clean flat illustration",
        ["thumbnail.png"],
        tags={"campaign": "web", "kind": "illustration"},
    ),
    row(
        "panorama-balloon",
        "Add a red hot-air balloon to the sky of the panorama in Image 1",
        ["panorama.webp"],
        size="1536*512",
        tags={"campaign": "web", "kind": "banner"},
    ),
    # A chained edit: an output of manifests/demo.parquet, named by its catalog row.
    row(
        "product-01-marble",
        "Put the coffee dripper from Image 1 on a marble counter beside a steaming cup",
        ["catalog:product-01"],
        size="1024*1024",
        tags={"campaign": "autumn-catalog", "kind": "product"},
    ),
    # Bad inputs: refused with a reason, nothing sent, the rows above go on.
    row("broken-input", "Brighten Image 1", ["broken.png"], tags={"kind": "bad"}),
    row("not-an-image", "Brighten Image 1", ["notes.png"], tags={"kind": "bad"}),
]

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("mode", pa.string()),
        ("model", pa.string()),
        ("size", pa.string()),
        ("seed", pa.int64()),
        ("input_images", pa.list_(pa.string())),
        ("tags", pa.map_(pa.string(), pa.string())),
    ]
)


def build() -> pa.Table:
    columns: dict[str, list[object]] = {name: [] for name in SCHEMA.names}
    for entry in ROWS:
        for name in SCHEMA.names:
            value = entry.get(name)
            if name == "tags" and value is not None:
                value = list(value.items())  # type: ignore[attr-defined]
            columns[name].append(value)
    return pa.table(columns, schema=SCHEMA)


if __name__ == "__main__":
    write_inputs()
    out = HERE / "edit-demo.parquet"
    pq.write_table(build(), out)
    print(f"wrote {out} ({len(ROWS)} rows) and {len(list(INPUTS.iterdir()))} files in {INPUTS}")
