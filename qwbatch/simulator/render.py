"""Deterministic placeholder PNGs: what a person needs to see what was asked.

A generated image is a flat colour derived from (prompt, seed, index) with the prompt written
on it, wrapped, plus the model, seed, index and size; an edit is the first input image, tinted
and captioned with the instruction, with the other inputs inset on its left edge, labelled
"Image 2" and "Image 3". The same :class:`Recipe` always gives the same bytes.

Fast mode skips text and Pillow: a hand-built flat PNG whose compressed rows are cached per
size; a small ``tEXt`` chunk still makes every image's bytes unique. Sizes are in pixels.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import re
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont, ImageOps, PngImagePlugin, UnidentifiedImageError

from qwbatch.core.fonts import caption_font
from qwbatch.simulator import lettering

#: zlib level for every PNG: speed over size (the simulator's images are throwaway).
PNG_COMPRESS_LEVEL = 1
#: Fast mode: compressed pixel rows kept, by (width, height).
FAST_CACHE_SIZE = 64
#: Input formats the provider accepts (docs/providers/dashscope.md §3.5).
INPUT_FORMATS = frozenset({"JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF", "MPO"})

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
RGB = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class Recipe:
    """Everything that decides one result image's bytes."""

    model: str
    prompt: str
    seed: int
    #: 0-based position of this image among the request's n.
    index: int
    count: int
    width: int
    height: int
    watermark: bool = False
    #: Edit: the first input image's encoded bytes; None for generation.
    base_image: bytes | None = None
    #: Edit: the other inputs ("Image 2", "Image 3"), drawn as labelled insets.
    extra_images: tuple[bytes, ...] = ()
    is_edit: bool = False
    fast: bool = False
    font_path: str | None = None
    #: Draw the prompt's quoted phrases with one character replaced (``misspell_rate``).
    misspell: bool = False


def colour(prompt: str, seed: int, index: int) -> RGB:
    """A pleasant, stable colour for (prompt, seed, index)."""
    digest = hashlib.sha256(f"{prompt}\x00{seed}\x00{index}".encode()).digest()
    hue = digest[0] / 256 + digest[1] / 65536
    saturation = 0.35 + 0.4 * digest[2] / 255
    value = 0.55 + 0.4 * digest[3] / 255
    red, green, blue = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(red * 255), round(green * 255), round(blue * 255)


def probe(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) of an encoded input image; ValueError if not one we accept."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in INPUT_FORMATS:
                raise ValueError(f"unsupported image format {image.format}")
            return str(image.format), *image.size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ValueError(str(exc)) from exc


def render(recipe: Recipe) -> bytes:
    """The PNG bytes for ``recipe``; pure and deterministic (safe to call from threads)."""
    if recipe.fast:
        return _fast_png(recipe)
    tint = colour(recipe.prompt, recipe.seed, recipe.index)
    if recipe.is_edit:
        image = _edit_canvas(recipe, tint)
        _inset_inputs(image, recipe, tint)
    else:
        image = Image.new("RGB", (recipe.width, recipe.height), tint)
    _draw_caption(image, recipe, tint)
    info = PngImagePlugin.PngInfo()
    info.add_itxt("prompt", recipe.prompt)
    info.add_text("qwbatch-simulator", _label(recipe))
    if recipe.misspell and lettering.quoted(recipe.prompt):
        # Ground truth for tests and benchmarks: this image's text was misspelt on purpose.
        info.add_text("qwbatch-simulator-misspelt", "1")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, pnginfo=info)
    return buffer.getvalue()


def truncate(png: bytes) -> bytes:
    """A corrupt copy: the first half of the bytes (the signature and IHDR survive)."""
    return png[: max(40, len(png) // 2)]


# ---------------------------------------------------------------------------- fast mode


def _fast_png(recipe: Recipe) -> bytes:
    """A flat W×H image in the recipe's exact colour, as a 1-bit palette PNG built by hand.

    Only the compressed pixel rows depend on the size, and they are cached per size; the
    colour lives in the 3-byte PLTE chunk, so a cache hit costs a few byte concatenations.
    """
    red, green, blue = colour(recipe.prompt, recipe.seed, recipe.index)
    header = struct.pack(">IIBBBBB", recipe.width, recipe.height, 1, 3, 0, 0, 0)
    text = b"qwbatch-simulator\x00" + _label(recipe).encode("latin-1", "replace")
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"PLTE", bytes((red, green, blue))),
            _chunk(b"tEXt", text),
            _flat_idat(recipe.width, recipe.height),
            _chunk(b"IEND", b""),
        )
    )


@lru_cache(maxsize=FAST_CACHE_SIZE)
def _flat_idat(width: int, height: int) -> bytes:
    # Each row: filter byte 0, then ceil(width / 8) bytes of palette index 0 (1 bit a pixel).
    rows = bytes(height * (1 + (width + 7) // 8))
    return _chunk(b"IDAT", zlib.compress(rows, PNG_COMPRESS_LEVEL))


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _label(recipe: Recipe) -> str:
    prompt_sha = hashlib.sha256(recipe.prompt.encode("utf-8")).hexdigest()
    return (
        f"model={recipe.model} seed={recipe.seed} index={recipe.index} n={recipe.count} "
        f"size={recipe.width}*{recipe.height} prompt_sha256={prompt_sha}"
    )


# ---------------------------------------------------------------------------- drawing


def _edit_canvas(recipe: Recipe, tint: RGB) -> Image.Image:
    size = (recipe.width, recipe.height)
    if recipe.base_image is None:
        # An input we did not fetch (public URL, oss://): a neutral gradient stands in.
        base = Image.linear_gradient("L").resize(size).convert("RGB")
    else:
        with Image.open(io.BytesIO(recipe.base_image)) as opened:
            base = ImageOps.fit(opened.convert("RGB"), size, Image.Resampling.BILINEAR)
    return Image.blend(base, Image.new("RGB", size, tint), 0.35)


def _inset_inputs(image: Image.Image, recipe: Recipe, tint: RGB) -> None:
    """Draw inputs 2 and 3 as framed, labelled thumbnails down the left edge."""
    width, height = image.size
    side = max(16, min(width, height) // 5)
    margin = max(4, min(width, height) // 24)
    label_font = _font(recipe.font_path, max(8, side // 8))
    top = margin * 3 + max(8, max(10, min(width, height) // 22) * 3 // 5)
    draw = ImageDraw.Draw(image)
    for position, data in enumerate(recipe.extra_images, start=2):
        with Image.open(io.BytesIO(data)) as opened:
            thumb = ImageOps.fit(opened.convert("RGB"), (side, side), Image.Resampling.BILINEAR)
        y = top + (position - 2) * (side + margin)
        if y + side > height:
            break
        draw.rectangle((margin - 2, y - 2, margin + side + 1, y + side + 1), fill=_contrast(tint))
        image.paste(thumb, (margin, y))
        draw.rectangle((margin, y, margin + side - 1, y + max(8, side // 8) + 4), fill=(20, 20, 20))
        draw.text((margin + 3, y + 2), f"Image {position}", font=label_font, fill=(245, 245, 245))


def _draw_caption(image: Image.Image, recipe: Recipe, tint: RGB) -> None:
    width, height = image.size
    draw = ImageDraw.Draw(image)
    ink = _contrast(tint)
    margin = max(4, min(width, height) // 24)
    body_size = max(10, min(width, height) // 22)
    small_size = max(8, body_size * 3 // 5)
    body, small = _font(recipe.font_path, body_size), _font(recipe.font_path, small_size)

    kind = "EDIT" if recipe.is_edit else "GENERATE"
    header = (
        f"{kind} · {recipe.model} · seed {recipe.seed} · image {recipe.index + 1}/"
        f"{recipe.count} · {width}×{height}"
    )
    if recipe.is_edit:  # an edit of an edit: the old header must not show through
        draw.rectangle((0, 0, width, margin * 2 + small_size), fill=tint)
    draw.text((margin, margin), header, font=small, fill=ink)

    line_height = round(body_size * 1.25)
    top = margin * 2 + small_size
    bottom = height - margin * 2 - small_size
    phrases = lettering.quoted(recipe.prompt)
    if phrases and not recipe.is_edit:
        # Text was asked for: draw the quoted words large instead of the prompt (whose
        # quotes, written small, would let a misspelt image read right).
        if recipe.misspell:
            phrases = lettering.misspell(
                phrases, f"{recipe.prompt}\x00{recipe.seed}\x00{recipe.index}"
            )
        lettering.draw_phrases(draw, phrases, box=(margin, top, width - margin, bottom), ink=ink)
        _draw_watermark(draw, recipe, width, height, margin, small, small_size, ink)
        return
    max_lines = max(1, (bottom - top) // line_height)
    lines = _wrap(recipe.prompt, body, width - 2 * margin)
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], lines[max_lines - 1].rstrip() + " …"]
    block = len(lines) * line_height
    if recipe.is_edit:
        # Keep the instruction on a band so it stays legible over any photo.
        y0 = max(top, bottom - block) - margin // 2
        draw.rectangle((0, y0, width, min(height, y0 + block + margin)), fill=tint)
        y = y0 + margin // 4
    else:
        y = top + max(0, (bottom - top - block) // 2)
    for line in lines:
        draw.text((margin, y), line, font=body, fill=ink)
        y += line_height
    _draw_watermark(draw, recipe, width, height, margin, small, small_size, ink)


def _draw_watermark(
    draw: ImageDraw.ImageDraw,
    recipe: Recipe,
    width: int,
    height: int,
    margin: int,
    small: Font,
    small_size: int,
    ink: RGB,
) -> None:
    if recipe.watermark:
        mark = "Qwen-Image"
        mark_width = round(draw.textlength(mark, font=small))
        draw.text(
            (width - margin - mark_width, height - margin - small_size), mark, font=small, fill=ink
        )


def _contrast(rgb: RGB) -> RGB:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (20, 20, 20) if luminance > 140 else (245, 245, 245)


_TOKEN_RE = re.compile(r"\S+\s*|\s+")


def _wrap(text: str, font: Font, max_width: int) -> list[str]:
    """Greedy wrap at spaces; runs without spaces (CJK, long URLs) break between characters."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for token in _TOKEN_RE.findall(paragraph):
            pieces = [token] if font.getlength(token.rstrip()) <= max_width else list(token)
            for piece in pieces:
                if line and font.getlength((line + piece).rstrip()) > max_width:
                    lines.append(line.rstrip())
                    line = piece.lstrip()
                else:
                    line += piece
        lines.append(line.rstrip())
    return lines


@lru_cache(maxsize=64)
def _font(path: str | None, size: int) -> Font:
    """``path`` when given (``SimulatorConfig.font_path``), else the captions' font: the
    bundled Noto Sans CJK (:mod:`qwbatch.core.fonts`), so Chinese prompts draw as written."""
    if path is not None:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            pass  # an unreadable font file: fall back to the captions' font
    return caption_font(size)
