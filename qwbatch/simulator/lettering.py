"""Lettering: the quoted words of a prompt, drawn large, sometimes misspelt on purpose.

Qwen-Image is asked for text by quoting it in the prompt (``a poster that says "SALE"``,
``“灯笼夜市”``, ``「秋季新品」``). The simulator draws each quoted phrase large and centred,
one under the other, in Noto Sans CJK (:mod:`qwbatch.core.fonts`), so that qwbatch's text
checks can read them back with a real OCR engine. A misspelt image (the seeded
``misspell_rate`` knob) has one letter, digit or Chinese character of one phrase replaced by
a clearly different one; which one is a pure function of (prompt, seed, index), so a rerun
gives the same bytes and a re-roll (another seed) rolls again.
"""

from __future__ import annotations

import hashlib
import re

from PIL import ImageDraw

from qwbatch.core.fonts import caption_font

_QUOTED = re.compile(r'"([^"\n]+)"|“([^”\n]+)”|「([^」\n]+)」')

#: Replacements that no OCR engine confuses with the letter they replace.
_LATIN = "BDFGHKMPRTWXZ"
_DIGITS = "2345789"
_CJK = "山水火木金土日月人大小中上下天王马鸟龙风雨雪花草"


def quoted(prompt: str) -> tuple[str, ...]:
    """The phrases a prompt quotes, in order: ``"…"``, ``“…”`` and ``「…」``."""
    return tuple(
        next(group for group in match.groups() if group).strip()
        for match in _QUOTED.finditer(prompt)
        if any(group and group.strip() for group in match.groups())
    )


def misspell(phrases: tuple[str, ...], salt: str) -> tuple[str, ...]:
    """``phrases`` with one letter, digit or CJK character replaced, chosen by ``salt``."""
    digest = hashlib.sha256(salt.encode()).digest()
    spots = [
        (p, i) for p, phrase in enumerate(phrases) for i, char in enumerate(phrase) if _kind(char)
    ]
    if not spots:
        return phrases
    which, position = spots[int.from_bytes(digest[:4], "big") % len(spots)]
    old = phrases[which][position]
    pool = _kind(old)
    choices = [char for char in pool if char.casefold() != old.casefold()]
    new = choices[digest[4] % len(choices)]
    new = new.lower() if old.islower() else new
    changed = phrases[which][:position] + new + phrases[which][position + 1 :]
    return (*phrases[:which], changed, *phrases[which + 1 :])


def _kind(char: str) -> str:
    if char.isascii() and char.isalpha():
        return _LATIN
    if char.isascii() and char.isdigit():
        return _DIGITS
    if "\u4e00" <= char <= "\u9fff":
        return _CJK
    return ""


def draw_phrases(
    draw: ImageDraw.ImageDraw,
    phrases: tuple[str, ...],
    *,
    box: tuple[int, int, int, int],
    ink: tuple[int, int, int],
) -> None:
    """Draw ``phrases`` centred in ``box`` (left, top, right, bottom; pixels), one per line,
    each as large as fits: at most a sixth of the box's height, at least 12 pixels."""
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    size = max(12, min(height // 6, height // max(1, 2 * len(phrases))))
    font = caption_font(size)
    while size > 12 and max(draw.textlength(p, font=font) for p in phrases) > width:
        size = max(12, size * 9 // 10)
        font = caption_font(size)
    line_height = round(size * 1.6)
    y = top + max(0, (height - line_height * len(phrases)) // 2)
    for phrase in phrases:
        x = left + max(0, (width - round(draw.textlength(phrase, font=font))) // 2)
        draw.text((x, y), phrase, font=font, fill=ink)
        y += line_height
