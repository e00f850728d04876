"""Fonts for captions on contact sheets: one that draws Chinese, Japanese and Korean.

Prompts are often Chinese, so captions need a font with CJK glyphs. qwbatch depends on the
``manimgx-fonts-cjk`` package (PyPI), which ships Noto Sans CJK as one variable OpenType
collection under the SIL Open Font License 1.1; collection face 2 is Simplified Chinese, and
it holds Latin, kana and hangul too. When that package is missing, a system CJK font is used
(Debian's ``fonts-noto-cjk`` or ``fonts-wqy-microhei``), then DejaVu Sans (no CJK), then
Pillow's built-in font (no CJK): captions still render, with boxes for missing glyphs.

Sizes are in pixels::

    font = caption_font(16, bold=True)
    draw.text((0, 0), "灯笼夜市 · Lantern Night", font=font)
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

log = logging.getLogger(__name__)

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

#: Face of the Noto Sans CJK collection for Simplified Chinese (0 JP, 1 KR, 2 SC, 3 TC, 4 HK).
_NOTO_CJK_SC_FACE = 2


@dataclass(frozen=True, slots=True)
class FontFile:
    """A font file, the face to use inside a collection, and whether it has CJK glyphs."""

    path: Path
    index: int = 0
    cjk: bool = False


_SYSTEM_FONTS: tuple[FontFile, ...] = (
    FontFile(Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"), 2, cjk=True),
    FontFile(Path("/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc"), 2, cjk=True),
    FontFile(Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"), 0, cjk=True),
    FontFile(Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")),
    FontFile(Path("/usr/share/fonts/dejavu/DejaVuSans.ttf")),
    FontFile(Path("/usr/share/fonts/TTF/DejaVuSans.ttf")),
)


def _packaged_cjk_font() -> FontFile | None:
    try:
        folder = importlib.resources.files("manimgx_fonts_cjk")
    except ModuleNotFoundError:
        return None
    for entry in folder.iterdir():
        if entry.name.endswith((".ttc", ".otc", ".otf")):
            return FontFile(Path(str(entry)), _NOTO_CJK_SC_FACE, cjk=True)
    return None


@lru_cache(maxsize=1)
def find_caption_font() -> FontFile | None:
    """The best caption font on this machine (CJK-capable first), or None for Pillow's own."""
    packaged = _packaged_cjk_font()
    if packaged is not None and packaged.path.is_file():
        return packaged
    for candidate in _SYSTEM_FONTS:
        if candidate.path.is_file():
            if not candidate.cjk:
                log.warning("no CJK font found: captions in Chinese will show boxes")
            return candidate
    return None


@lru_cache(maxsize=32)
def caption_font(size: int, *, bold: bool = False) -> Font:
    """A caption font ``size`` pixels high; ``bold`` where the font has a bold weight."""
    found = find_caption_font()
    if found is None:
        return ImageFont.load_default(size=size)
    try:
        font = ImageFont.truetype(str(found.path), size, index=found.index)
    except OSError:
        log.warning("cannot load font %s; using Pillow's built-in font", found.path)
        return ImageFont.load_default(size=size)
    # A variable font (the packaged Noto Sans CJK) starts at its lightest weight; a static
    # font refuses variations and keeps its one weight.
    with contextlib.suppress(OSError, ValueError):
        font.set_variation_by_name("Bold" if bold else "Regular")
    return font
