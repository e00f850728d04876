"""Contact sheets: a run's images on one grid, each with its row id and a short prompt.

Tiles are the thumbnails stored beside the outputs (see :mod:`qwbatch.storage.thumbs`); a row that
ended without an image gets a grey tile naming its status and error code. Captions use a
CJK-capable font (:mod:`qwbatch.core.fonts`), so Chinese prompts read as written. The header
ends with the selected run's spend beside the lifetime spend of DEST, as
:mod:`qwbatch.catalog.spend` defines them. Sizes are in pixels.

::

    sheet = make_contact_sheet(store, run="latest", filters=parse_filters(["kind=poster"]))
    Path("sheet.png").write_bytes(sheet.png())
"""

from __future__ import annotations

import base64
import io
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw, UnidentifiedImageError

from qwbatch.catalog import spend as catalog_spend
from qwbatch.catalog import view as catalog_view
from qwbatch.catalog.view import RowFilter
from qwbatch.core.errors import QwBatchError
from qwbatch.core.fonts import Font, caption_font
from qwbatch.runs.summary import RunSummary
from qwbatch.storage.layout import run_sheet_key
from qwbatch.storage.stores import ObjectStore
from qwbatch.text import read_lines

log = logging.getLogger(__name__)

#: Tiles drawn at most by default; a footer says how many more matched.
DEFAULT_LIMIT = 500
#: How many tiles a run's own sheet (stored in DEST) shows at most.
RUN_SHEET_LIMIT = 120

_PAGE = (246, 245, 242)
_CARD = (255, 255, 255)
_FRAME = (226, 224, 219)
_INK = (34, 34, 34)
_MUTED = (110, 110, 110)
_BAD_BG = (236, 233, 230)
_BAD_INK = (176, 40, 40)


@dataclass(frozen=True, slots=True)
class Layout:
    """Grid geometry: ``columns`` tiles a row, each image box ``tile`` pixels square."""

    columns: int = 6
    tile: int = 200
    padding: int = 12
    id_size: int = 15
    prompt_size: int = 13
    prompt_lines: int = 2
    title_size: int = 18


@dataclass(frozen=True, slots=True)
class Tile:
    """One cell of the sheet: a thumbnail (encoded bytes) or, without one, a status label."""

    row_id: str
    prompt: str
    status: str
    image: bytes | None = None
    note: str | None = None
    image_index: int | None = None
    n: int = 1
    #: A row whose expected text did not read right: framed red, expected beside read.
    text_failed: bool = False

    @property
    def caption_id(self) -> str:
        if self.n > 1 and self.image_index is not None:
            return f"{self.row_id} #{self.image_index + 1}"
        return self.row_id


@dataclass(slots=True)
class ContactSheet:
    """A drawn sheet and what it shows: ``shown`` tiles of ``matched`` rows."""

    image: Image.Image
    shown: int
    matched: int
    tiles: list[Tile] = field(default_factory=list)
    #: The header's second line: the selected run's spend beside the lifetime's.
    subtitle: str = ""

    def png(self) -> bytes:
        out = io.BytesIO()
        self.image.save(out, format="PNG", optimize=True)
        return out.getvalue()

    def preview_data_uri(self, *, max_width: int = 900, quality: int = 70) -> str:
        """A small JPEG of the sheet as a ``data:`` URI, for Markdown that cannot link files."""
        image = self.image.convert("RGB")
        if image.width > max_width:
            height = round(image.height * max_width / image.width)
            image = image.resize((max_width, height), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=quality, optimize=True)
        return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def tiles_for(store: ObjectStore, rows: Sequence[dict[str, Any]]) -> list[Tile]:
    """A tile per row, with its thumbnail read from the store (or made from the output)."""
    tiles = []
    for row in rows:
        image = catalog_view.load_thumbnail(store, row)
        note = None
        if image is None:
            note = row["status"] if row["status"] != "succeeded" else "image missing"
            if row.get("error_code"):
                note += f" · {row['error_code']}"
        caption = row["prompt"]
        if row.get("text_expected"):
            # Checked text: what was asked for beside what was read, instead of the prompt.
            found = row.get("text_found") or ""
            read = " / ".join(read_lines(row["text_expected"], found)) or "—"
            caption = f"expected {' | '.join(row['text_expected'])} · read {read}"
        tiles.append(
            Tile(
                row_id=row["row_id"],
                prompt=caption,
                status=row["status"],
                image=image,
                note=note,
                image_index=row.get("image_index"),
                n=int(row.get("n") or 1),
                text_failed=bool(row.get("text_expected")) and row.get("text_ok") is not True,
            )
        )
    return tiles


def make_contact_sheet(
    store: ObjectStore,
    *,
    run: str | None = None,
    filters: Sequence[RowFilter] = (),
    limit: int = DEFAULT_LIMIT,
    layout: Layout | None = None,
    title: str | None = None,
    approved_only: bool = False,
) -> ContactSheet:
    """The contact sheet of ``store``'s catalog (selection as in :mod:`qwbatch.catalog.view`).

    Its header is ``title`` (default: DEST, the selection and the tile count), and under it a
    line of spend. ``approved_only`` draws only the images a review approved.
    """
    rows = catalog_view.select_rows(store, run=run, filters=filters, approved_only=approved_only)
    tiles = tiles_for(store, rows[:limit])
    if title is None:
        scope = f"run {run}" if run else "latest of every row"
        title = f"{store.root_uri} · {scope} · {len(rows)} tiles"
    runs = sorted({row["run_id"] for row in rows})
    selected = run if run not in (None, "latest") else (runs[-1] if runs else None)
    currency = next((row["currency"] for row in rows if row.get("currency")), "USD")
    money = catalog_spend.spend(store, selected).line(currency)
    image = draw_sheet(
        tiles, title=title, subtitle=money, more=len(rows) - len(tiles), layout=layout
    )
    return ContactSheet(
        image=image, shown=len(tiles), matched=len(rows), tiles=tiles, subtitle=money
    )


def store_run_sheet(
    store: ObjectStore, run_id: str, *, limit: int = RUN_SHEET_LIMIT
) -> tuple[str, ContactSheet]:
    """Draw run ``run_id``'s sheet (its first ``limit`` tiles) and store it in DEST.

    The sheet goes to ``runs/<run_id>/contact-sheet.png``; returns its URI and the sheet.
    """
    sheet = make_contact_sheet(store, run=run_id, limit=limit, title=f"run {run_id}")
    put = store.put(run_sheet_key(run_id), sheet.png(), content_type="image/png")
    return put.uri, sheet


def publish_run_sheet(store: ObjectStore, summary: RunSummary) -> str | None:
    """Store the run's sheet and note its URI in ``summary``; a small preview as a data URI.

    A sheet is a view, not a result: when it cannot be drawn or stored the run still stands,
    a warning is logged and None is returned.
    """
    try:
        uri, sheet = store_run_sheet(store, summary.run_id)
    except QwBatchError as exc:
        log.warning("no contact sheet for run %s: %s", summary.run_id, exc.message)
        return None
    summary.contact_sheet_uri = uri
    return sheet.preview_data_uri()


# ------------------------------------------------------------------------------ drawing


def header_height(layout: Layout, *, subtitle: bool) -> int:
    """Pixels above the first row of tiles: the title, and the subtitle's line if any."""
    return round(layout.title_size * 2.2) + (round(layout.prompt_size * 1.6) if subtitle else 0)


def draw_sheet(
    tiles: Sequence[Tile],
    *,
    title: str,
    subtitle: str | None = None,
    more: int = 0,
    layout: Layout | None = None,
) -> Image.Image:
    """Lay ``tiles`` out on a grid under ``title`` (and ``subtitle``); ``more`` counts tiles
    left off."""
    lay = layout or Layout()
    columns = max(1, min(lay.columns, len(tiles)))
    rows = max(1, -(-len(tiles) // columns))
    id_font = caption_font(lay.id_size, bold=True)
    prompt_font = caption_font(lay.prompt_size)
    title_font = caption_font(lay.title_size, bold=True)
    line = round(lay.prompt_size * 1.35)
    caption_h = round(lay.id_size * 1.5) + line * lay.prompt_lines + lay.padding // 2
    cell_w, cell_h = lay.tile + lay.padding, lay.tile + caption_h + lay.padding
    header_h = header_height(lay, subtitle=subtitle is not None)
    footer_h = round(lay.prompt_size * 2.2) if more > 0 or not tiles else 0
    width = max(columns * cell_w + lay.padding, 480)
    height = header_h + rows * cell_h + lay.padding + footer_h
    page = Image.new("RGB", (width, height), _PAGE)
    draw = ImageDraw.Draw(page)
    title_text = fit_lines(title, title_font, width - 2 * lay.padding, 1)[0]
    draw.text((lay.padding, lay.padding // 2 + 2), title_text, font=title_font, fill=_INK)
    if subtitle is not None:
        sub_text = fit_lines(subtitle, prompt_font, width - 2 * lay.padding, 1)[0]
        sub_y = round(lay.title_size * 2.2) - lay.padding // 4
        draw.text((lay.padding, sub_y), sub_text, font=prompt_font, fill=_MUTED)

    for number, tile in enumerate(tiles):
        x = lay.padding + (number % columns) * cell_w
        y = header_h + (number // columns) * cell_h
        _draw_tile(draw, page, tile, x, y, lay, id_font, prompt_font, line)

    if not tiles:
        draw.text((lay.padding, header_h), "nothing to show", font=prompt_font, fill=_MUTED)
    elif more > 0:
        draw.text(
            (lay.padding, height - footer_h + lay.padding // 2),
            f"… and {more} more not shown",
            font=prompt_font,
            fill=_MUTED,
        )
    return page


def _draw_tile(
    draw: ImageDraw.ImageDraw,
    page: Image.Image,
    tile: Tile,
    x: int,
    y: int,
    lay: Layout,
    id_font: Font,
    prompt_font: Font,
    line: int,
) -> None:
    box = lay.tile
    draw.rectangle((x - 1, y - 1, x + box, y + box), fill=_CARD, outline=_FRAME)
    thumb = _open(tile.image) if tile.image is not None else None
    if thumb is not None:
        thumb.thumbnail((box, box), Image.Resampling.LANCZOS)
        offset = (x + (box - thumb.width) // 2, y + (box - thumb.height) // 2)
        page.paste(thumb, offset, thumb if thumb.mode == "RGBA" else None)
    else:
        draw.rectangle((x, y, x + box - 1, y + box - 1), fill=_BAD_BG)
        for number, text in enumerate(fit_lines(tile.note or tile.status, id_font, box - 16, 3)):
            draw.text(
                (x + 8, y + 8 + number * round(lay.id_size * 1.4)),
                text,
                font=id_font,
                fill=_BAD_INK,
            )
    if tile.text_failed:
        draw.rectangle((x - 3, y - 3, x + box + 2, y + box + 2), outline=_BAD_INK, width=3)
    text_y = y + box + lay.padding // 2
    caption = fit_lines(tile.caption_id, id_font, box, 1)[0]
    draw.text((x, text_y), caption, font=id_font, fill=_BAD_INK if tile.text_failed else _INK)
    text_y += round(lay.id_size * 1.5)
    for text in fit_lines(tile.prompt, prompt_font, box, lay.prompt_lines):
        draw.text(
            (x, text_y), text, font=prompt_font, fill=_BAD_INK if tile.text_failed else _MUTED
        )
        text_y += line


def _open(data: bytes) -> Image.Image | None:
    try:
        with Image.open(io.BytesIO(data)) as opened:
            return opened.convert("RGBA" if opened.mode in ("RGBA", "LA", "PA") else "RGB")
    except (UnidentifiedImageError, OSError, ValueError):
        return None


# One token: a run of non-CJK, non-space characters, one CJK character, or a run of spaces.
_TOKENS = re.compile(
    r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]|[^\s\u2e80-\u9fff\uac00-\ud7af"
    r"\uf900-\ufaff\uff00-\uffef]+|\s+"
)
_ELLIPSIS = "…"


def fit_lines(text: str, font: Font, width: int, max_lines: int) -> list[str]:
    """Wrap ``text`` into at most ``max_lines`` lines of ``width`` pixels, ``…`` if cut.

    Breaks at spaces, and between any two CJK characters; a word wider than a line is cut.
    """
    words = _TOKENS.findall(" ".join(text.split()))
    lines: list[str] = []
    current = ""
    used = 0
    for word in words:
        if len(lines) >= max_lines:
            break
        used += 1
        candidate = current + word
        if font.getlength(candidate.rstrip()) <= width:
            current = candidate
            continue
        if current.strip():
            lines.append(current.rstrip())
        current = word.lstrip()
        while current and font.getlength(current) > width:
            head = _prefix_that_fits(current, font, width)
            lines.append(head)
            current = current[len(head) :]
    if current.strip():
        lines.append(current.rstrip())
    cut = len(lines) > max_lines or used < len(words)
    lines = lines[:max_lines] or [""]
    if cut:
        lines[-1] = _with_ellipsis(lines[-1], font, width)
    return lines


def _prefix_that_fits(text: str, font: Font, width: int) -> str:
    end = 1
    while end < len(text) and font.getlength(text[: end + 1]) <= width:
        end += 1
    return text[:end]


def _with_ellipsis(text: str, font: Font, width: int) -> str:
    text = text.rstrip()
    while text and font.getlength(text + _ELLIPSIS) > width:
        text = text[:-1].rstrip()
    return text + _ELLIPSIS
