"""The report page's own font: the bundled Noto Sans CJK cut down to the characters it shows.

A page that opens on any machine must draw Chinese prompts even where no CJK font is
installed, and load nothing from the network. So the page embeds, as a ``data:`` URI in an
``@font-face`` rule, a subset of the font captions use (:mod:`qwbatch.core.fonts`: Noto Sans
CJK SC from the ``manimgx-fonts-cjk`` package, a variable font, so bold stays bold) holding
only the characters of the page. fontTools' subsetter cuts it (about a second for a page;
some 30 KB for a short one, roughly 0.3 KB more per distinct CJK character).

Without a CJK font on the machine running the report, no face is embedded and the page falls
back to the viewer's fonts.
"""

from __future__ import annotations

import base64
import io
import logging

from fontTools import subset
from fontTools.ttLib import TTFont, TTLibError

from qwbatch.core.fonts import find_caption_font

log = logging.getLogger(__name__)

#: The CSS family name of the embedded subset.
FAMILY = "qwbatch-noto"


def subset_font(text: str) -> bytes | None:
    """An OpenType font with the glyphs of ``text``'s characters, or None without a CJK font."""
    found = find_caption_font()
    if found is None or not found.cjk:
        return None
    options = subset.Options()
    options.notdef_outline = True  # a character the font lacks shows a box, not nothing
    options.layout_features = ["*"]
    options.name_IDs = ["*"]  # the licence and copyright names travel with the font (OFL)
    try:
        font = TTFont(str(found.path), fontNumber=found.index, lazy=True)
        subsetter = subset.Subsetter(options)
        subsetter.populate(text="".join(sorted(set(text))))
        subsetter.subset(font)
        out = io.BytesIO()
        font.save(out)
    except (OSError, TTLibError, subset.Subsetter.SubsettingError) as exc:
        log.warning("no embedded font in the report: cannot subset %s: %s", found.path, exc)
        return None
    return out.getvalue()


def font_face_css(text: str) -> str:
    """An ``@font-face`` rule naming :data:`FAMILY` for ``text``'s characters, or ``""``."""
    data = subset_font(text)
    if data is None:
        return ""
    uri = "data:font/otf;base64," + base64.b64encode(data).decode("ascii")
    return (
        f'@font-face{{font-family:"{FAMILY}";src:url({uri}) format("opentype");'
        "font-weight:100 900;font-display:swap}"
    )
