"""The compare sheet: the same requests on several models, side by side (PNG and HTML).

One line per manifest row, one column per model. A row rendered on several models (the
``models`` column or ``--models``) has ids ``ID@MODEL``: its line is ``ID``. Rows whose ids
do not say a model line up by prompt, so a manifest that asks the same prompt of each model
in rows of its own compares the same way. Each cell shows the image's thumbnail, its cost
and status; a line whose row carries an ``expected_text`` tag shows that text, and the
cell's ``text_verdict`` when the catalog holds one.

Blind mode hides the model names and the costs (a price names its provider): each line's
cells are shuffled (seeded) under the labels A, B, C …, and the key (line → label → model)
is returned apart, for a separate file.

::

    sheet = make_compare_sheet(store, blind=True, seed=7)
    Path("compare.png").write_bytes(sheet.png())
    Path("compare.html").write_text(sheet.html())
    Path("compare-key.json").write_text(json.dumps(sheet.key))
"""

from __future__ import annotations

import base64
import html
import io
import random
import string
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw, UnidentifiedImageError

from qwbatch.catalog import view as catalog_view
from qwbatch.core.fonts import Font, caption_font
from qwbatch.storage.stores import ObjectStore

#: Pixels: the image box of a cell, the gap around cells, the label column's width.
TILE = 220
PAD = 12
LABEL_W = 260
_PAGE, _INK, _MUTED, _BAD = (246, 245, 242), (34, 34, 34), (110, 110, 110), (176, 40, 40)


@dataclass(slots=True)
class Cell:
    model: str
    status: str
    cost: float
    currency: str | None
    thumbnail: bytes | None
    verdict: str | None = None


@dataclass(slots=True)
class Line:
    """One manifest row across models: its id, prompt, expected text and cells by column."""

    key: str
    prompt: str
    expected_text: str | None
    cells: dict[str, Cell] = field(default_factory=dict)


@dataclass(slots=True)
class CompareSheet:
    """Lines × columns; ``columns`` are model names, or labels A, B … in blind mode, where
    ``key`` maps each line to its labels' models."""

    columns: list[str]
    lines: list[Line]
    blind: bool = False
    key: dict[str, dict[str, str]] = field(default_factory=dict)

    def png(self) -> bytes:
        return _draw(self)

    def html(self) -> str:
        return _html(self)


def line_key(row: dict[str, Any]) -> str:
    """``ID`` of a row ``ID@MODEL`` rendered on several models; else the row's prompt."""
    row_id, model = str(row["row_id"]), str(row["model"])
    suffix = f"@{model}"
    return row_id.removesuffix(suffix) if row_id.endswith(suffix) else str(row["prompt"])


def make_compare_sheet(
    store: ObjectStore,
    *,
    run: str | None = None,
    models: list[str] | None = None,
    blind: bool = False,
    seed: int = 0,
) -> CompareSheet:
    """The sheet of ``store``'s catalog (each row's newest run, or ``run``); ``models``
    chooses and orders the columns (default: every model, in name order)."""
    rows = catalog_view.select_rows(store, run=run)
    rows.sort(key=lambda r: r["status"] == "deduplicated")  # a paid image first, if any
    lines: dict[str, Line] = {}
    for row in rows:
        if row.get("image_index") not in (None, 0) or (models and row["model"] not in models):
            continue  # one image a cell: the first
        tags = row.get("tags") or {}
        line = lines.setdefault(
            line_key(row), Line(line_key(row), str(row["prompt"]), tags.get("expected_text"))
        )
        if row["model"] in line.cells:
            continue
        line.cells[row["model"]] = Cell(
            model=row["model"],
            status=row["status"],
            cost=float(row.get("cost") or 0.0),
            currency=row.get("currency"),
            thumbnail=catalog_view.load_thumbnail(store, row),
            verdict=row.get("text_verdict"),
        )
    columns = models or sorted({m for line in lines.values() for m in line.cells})
    ordered = sorted(lines.values(), key=lambda line: line.key)
    if not blind:
        return CompareSheet(columns, ordered)
    labels = list(string.ascii_uppercase[: len(columns)])
    rng = random.Random(seed)
    key: dict[str, dict[str, str]] = {}
    for line in ordered:
        shuffled = columns[:]
        rng.shuffle(shuffled)
        key[line.key] = dict(zip(labels, shuffled, strict=True))
        line.cells = {
            label: line.cells[model]
            for label, model in key[line.key].items()
            if model in line.cells
        }
    return CompareSheet(labels, ordered, blind=True, key=key)


def _caption(cell: Cell, blind: bool) -> str:
    """Model, cost (or status) and text verdict; blind: no model and no cost (a price
    names its provider), only a status that is not a success."""
    ok = cell.status in ("succeeded", "deduplicated")
    money = f"{cell.cost:.4f} {cell.currency or ''}".strip()
    parts = [] if blind else [cell.model, money if ok else cell.status]
    if blind and not ok:
        parts.append(cell.status)
    if cell.verdict:
        parts.append(f"text {cell.verdict}")
    return " · ".join(parts)


def _draw(sheet: CompareSheet) -> bytes:
    font, small = caption_font(15, bold=True), caption_font(13)
    cell_h = TILE + 40
    width = LABEL_W + len(sheet.columns) * (TILE + PAD) + PAD
    height = 40 + len(sheet.lines) * (cell_h + PAD) + PAD
    image = Image.new("RGB", (width, height), _PAGE)
    draw = ImageDraw.Draw(image)
    for index, column in enumerate(sheet.columns):
        draw.text((LABEL_W + index * (TILE + PAD), 12), column, fill=_INK, font=font)
    for row, line in enumerate(sheet.lines):
        top = 40 + row * (cell_h + PAD)
        room = LABEL_W - 2 * PAD
        draw.text((PAD, top), _fit(line.key, font, room), fill=_INK, font=font)
        draw.text((PAD, top + 22), _fit(line.prompt, small, room), fill=_MUTED, font=small)
        if line.expected_text:
            expected = _fit(f"text: {line.expected_text}", small, room)
            draw.text((PAD, top + 42), expected, fill=_MUTED, font=small)
        for index, column in enumerate(sheet.columns):
            left = LABEL_W + index * (TILE + PAD)
            cell = line.cells.get(column)
            if cell is None:
                draw.rectangle((left, top, left + TILE, top + TILE), outline=_MUTED)
                draw.text((left + 8, top + 8), "not rendered", fill=_MUTED, font=small)
                continue
            thumb = _open(cell.thumbnail)
            if thumb is not None:
                thumb.thumbnail((TILE, TILE))
                image.paste(thumb, (left + (TILE - thumb.width) // 2, top))
            else:
                draw.rectangle((left, top, left + TILE, top + TILE), fill=(236, 233, 230))
                draw.text((left + 8, top + 8), cell.status, fill=_BAD, font=small)
            caption = _fit(_caption(cell, sheet.blind), small, TILE)
            draw.text((left, top + TILE + 6), caption, fill=_INK, font=small)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _html(sheet: CompareSheet) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in sheet.columns)
    body = []
    for line in sheet.lines:
        label = f"<b>{html.escape(line.key)}</b><br><small>{html.escape(line.prompt)}</small>"
        if line.expected_text:
            label += f"<br><small>text: {html.escape(line.expected_text)}</small>"
        cells = [f"<td>{label}</td>"]
        for column in sheet.columns:
            cell = line.cells.get(column)
            if cell is None:
                cells.append("<td>not rendered</td>")
                continue
            img = ""
            if cell.thumbnail:
                data = base64.b64encode(cell.thumbnail).decode()
                img = f'<img src="data:image/webp;base64,{data}" width="{TILE}"><br>'
            cells.append(f"<td>{img}{html.escape(_caption(cell, sheet.blind))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    title = "qwbatch compare (blind)" if sheet.blind else "qwbatch compare"
    return (
        f"<!doctype html><meta charset=utf-8><title>{title}</title>"
        "<style>body{font-family:sans-serif;background:#f6f5f2}td,th{vertical-align:top;"
        "padding:6px;text-align:left}</style>"
        f"<h1>{title}</h1><table><tr><th>row</th>{head}</tr>{''.join(body)}</table>"
    )


def _open(data: bytes | None) -> Image.Image | None:
    if not data:
        return None
    try:
        opened = Image.open(io.BytesIO(data))
        opened.load()
        return opened.convert("RGB")
    except (UnidentifiedImageError, OSError):
        return None


def _fit(text: str, font: Font, width: int) -> str:
    """``text`` on one line, cut with an ellipsis to ``width`` pixels in ``font``."""
    flat = " ".join(text.split())
    if font.getlength(flat) <= width:
        return flat
    while flat and font.getlength(flat + "…") > width:
        flat = flat[:-1]
    return flat + "…"
