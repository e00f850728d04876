"""The HTML report: one self-contained page that opens from disk, for a person to judge a run.

It holds totals (by status, by model, by tag), failures with their reasons, the rows a budget
skipped (a ceiling the user set, not a failure), the manifest rows each run shown rejected,
and a gallery of every image with its id, status, model, size, seed, prompt, tags, and the
run that rendered it with what it cost there. Money follows :mod:`qwbatch.catalog.spend`:
the cost of the rows shown counts each image at its rendering's cost (a deduplicated row
shows an image paid for earlier), beside the selected run's own spend and the lifetime
spend of DEST. Thumbnails are inlined as ``data:`` URIs and the styles as one ``<style>``
block, with a subset of Noto Sans CJK for the page's characters (:mod:`.page_font`), so
Chinese reads on a machine without CJK fonts; the page loads nothing else (its
Content-Security-Policy forbids it) and runs no script, except in review mode. Each image
opens its full-size output when ``image_link`` is given (see :mod:`qwbatch.report.links`:
relative for a local DEST, presigned or public for S3).
Every catalog value is HTML-escaped. Money is in the catalog's currency.

**Review mode** (``review=True``, ``qwbatch report DEST --html page.html --review``): each
image gets Approve / Reject buttons and a note; decisions are kept in the browser's
``localStorage`` (per DEST), shown as the card's colour, and "Export decisions" downloads
them as ``decisions.json`` for ``qwbatch review DEST decisions.json``
(:mod:`qwbatch.catalog.review`). Decisions already recorded in DEST show until changed. The
one inline script is allowed by its hash in the page's Content-Security-Policy; it sends
nothing anywhere.

The selection of rows is :mod:`qwbatch.catalog.view`'s::

    html = render_html_report(store, run="latest")
    Path("report.html").write_text(html, encoding="utf-8")
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape, unescape
from typing import Any

import pyarrow.parquet as pq

from qwbatch.catalog import review as catalog_review
from qwbatch.catalog import spend as catalog_spend
from qwbatch.catalog import view as catalog_view
from qwbatch.catalog.spend import Origin
from qwbatch.catalog.view import RowFilter
from qwbatch.core.errors import StorageError, StorageTransientError
from qwbatch.report.links import ImageLink
from qwbatch.report.page_font import FAMILY, font_face_css
from qwbatch.runs.progress import GOOD_STATUSES
from qwbatch.storage.layout import delivered_key, rejects_key
from qwbatch.storage.stores import ObjectStore
from qwbatch.text import read_lines

#: Images inlined at most by default; the page says how many more there were.
DEFAULT_MAX_IMAGES = 1000


@dataclass(slots=True)
class _Tally:
    """Counts for one group of rows (a model, a tag, everything)."""

    rows: int = 0
    images: int = 0
    failed: int = 0
    skipped: int = 0
    cost: float = 0.0

    def add(self, row: dict[str, Any], origin: Origin) -> None:
        self.rows += 1
        self.cost += origin.cost
        if row["status"] in GOOD_STATUSES:
            self.images += 1 if catalog_view.has_image(row) else 0
        elif row["status"] == SKIPPED:
            self.skipped += 1
        else:
            self.failed += 1


#: The status of rows a budget kept from rendering: the user's ceiling, not a failure.
SKIPPED = "skipped_budget"
#: How statuses read on the page (others as they are).
_STATUS_WORDS = {SKIPPED: "skipped (budget)"}


def render_html_report(
    store: ObjectStore,
    run: str | None = None,
    *,
    filters: Sequence[RowFilter] = (),
    max_images: int = DEFAULT_MAX_IMAGES,
    generated_at: dt.datetime | None = None,
    image_link: ImageLink | None = None,
    embed_font: bool = True,
    review: bool = False,
) -> str:
    """The report page for ``store`` (one run, ``"latest"``, or the latest of every row);
    ``review`` adds the review controls (see the module docstring)."""
    rows = catalog_view.select_rows(store, run=run, filters=filters)
    runs = sorted({row["run_id"] for row in rows})
    selected = run if run not in (None, "latest") else (runs[-1] if runs else None)
    currency = next((row["currency"] for row in rows if row.get("currency")), "USD")
    when = (generated_at or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d %H:%M UTC")
    scope = "latest of every row" if run is None else f"run {selected}"
    found = catalog_spend.origins(store)
    origins = [catalog_spend.origin_of(row, found) for row in rows]
    money = catalog_spend.spend(store, selected)
    decisions = catalog_review.read_decisions(store) if review else None
    body = "\n".join(
        [
            f"<h1>qwbatch report</h1><p class=meta>{escape(store.root_uri)} · {escape(scope)}"
            f" · {len(runs)} run(s) · generated {when}</p>",
            _totals(rows, origins, money, currency),
            _failures(rows),
            _text_checks(rows),
            _skipped(rows),
            _rejects(store, runs or ([selected] if selected else [])),
            _review_bar(store, rows) if review else "",
            _gallery(store, rows, origins, max_images, currency, image_link, decisions),
            _by_tag(rows, origins, currency),
        ]
    )
    title = escape(f"qwbatch report · {scope}")
    style = _STYLE + (font_face_css(unescape(title + body)) if embed_font else "")
    if not review:
        return _PAGE.format(title=title, style=style, body=body, script="", script_src="")
    digest = base64.b64encode(hashlib.sha256(_REVIEW_SCRIPT.encode()).digest()).decode()
    return _PAGE.format(
        title=title,
        style=style + _REVIEW_STYLE,
        body=body,
        script=f"<script>{_REVIEW_SCRIPT}</script>",
        script_src=f"; script-src 'sha256-{digest}'",
    )


# ------------------------------------------------------------------------------ sections


def _totals(
    rows: Sequence[dict[str, Any]],
    origins: Sequence[Origin],
    money: catalog_spend.Spend,
    currency: str,
) -> str:
    total = _Tally()
    for row, origin in zip(rows, origins, strict=True):
        total.add(row, origin)
    statuses = Counter(row["status"] for row in rows)
    cards = [
        ("rows", str(total.rows)),
        ("images", str(total.images)),
        ("failed", str(total.failed)),
        ("skipped by the budget", str(total.skipped)),
        (f"cost of the images shown ({currency})", f"{total.cost:.4f}"),
    ]
    if money.run_id is not None:
        cards.append((f"spent by run {money.run_id}", _money(money.run_cost, currency)))
    lifetime = f"lifetime spend ({money.runs} run{'s' if money.runs != 1 else ''})"
    cards.append((lifetime, _money(money.lifetime_cost, currency)))
    html = "<section class=cards>" + "".join(
        f"<div class=card><b>{escape(value)}</b><span>{escape(label)}</span></div>"
        for label, value in cards
    )
    html += "</section>"
    status_rows = [[_word(status), str(count)] for status, count in sorted(statuses.items())]
    by_model: dict[str, _Tally] = defaultdict(_Tally)
    for row, origin in zip(rows, origins, strict=True):
        by_model[row["model"]].add(row, origin)
    models = [[name, *_cells(t)] for name, t in sorted(by_model.items())]
    return (
        html
        + "<div class=row><div>"
        + _table("By status", ["status", "rows"], status_rows, numeric={1})
        + "</div><div>"
        + _table("By model", ["model", *_head(currency)], models, numeric={1, 2, 3, 4, 5})
        + "</div></div>"
    )


def _by_tag(rows: Sequence[dict[str, Any]], origins: Sequence[Origin], currency: str) -> str:
    by_tag: dict[tuple[str, str], _Tally] = defaultdict(_Tally)
    for row, origin in zip(rows, origins, strict=True):
        for key, value in row["tags"].items():
            by_tag[(key, value)].add(row, origin)
    tags = [[f"{k}={v}" if v else k, *_cells(t)] for (k, v), t in sorted(by_tag.items())]
    head = ["tag", *_head(currency)]
    return _table("By tag", head, tags, numeric={1, 2, 3, 4, 5}, empty="no tags")


def _head(currency: str) -> list[str]:
    return ["rows", "images", "failed", "skipped (budget)", f"cost ({currency})"]


def _cells(t: _Tally) -> list[str]:
    return [str(t.rows), str(t.images), str(t.failed), str(t.skipped), f"{t.cost:.4f}"]


def _money(amounts: dict[str, float], currency: str) -> str:
    """One currency's amount as ``0.0000``, or each with its currency when they mix."""
    if set(amounts) <= {currency}:
        return f"{amounts.get(currency, 0.0):.4f}"
    return catalog_spend.money_text(amounts, currency)


def _word(status: str) -> str:
    return _STATUS_WORDS.get(status, status)


def _skipped(rows: Sequence[dict[str, Any]]) -> str:
    skipped = [row for row in rows if row["status"] == SKIPPED]
    if not skipped:
        return ""
    body = [
        [row["row_id"], row["model"], row["run_id"], row.get("error_message") or ""]
        for row in skipped
    ]
    head = ["id", "model", "run", "why"]
    title = f"Skipped by the budget ({len(skipped)}): not sent, nothing spent"
    return _table(title, head, body)


def _failures(rows: Sequence[dict[str, Any]]) -> str:
    bad = [row for row in rows if row["status"] not in GOOD_STATUSES | {SKIPPED}]
    body = [
        [
            row["row_id"],
            row["model"],
            row["status"],
            row.get("error_code") or "",
            row.get("error_message") or "",
            str(row.get("attempts") or 0),
        ]
        for row in bad
    ]
    head = ["id", "model", "status", "error", "reason", "attempts"]
    return _table(f"Failures ({len(bad)})", head, body, numeric={5}, empty="no failures")


def _text_checks(rows: Sequence[dict[str, Any]]) -> str:
    """Rows whose text was checked: what was asked for beside what was read, failures first."""
    checked = [row for row in rows if row.get("text_expected")]
    if not checked:
        return ""
    checked.sort(key=lambda row: (row.get("text_ok") is True, row["row_id"]))
    body = [
        [
            _label(row),
            " | ".join(row["text_expected"]),
            _read(row),
            "" if row.get("text_cer") is None else f"{row['text_cer']:.3f}",
            str(row.get("rerolls") or 0),
            _verdict(row),
        ]
        for row in checked
    ]
    passed = sum(1 for row in checked if row.get("text_ok") is True)
    head = ["id", "expected", "read", "CER", "re-rolls", "verdict"]
    return _table(
        f"Text checks ({passed} of {len(checked)} read right)", head, body, numeric={3, 4}
    )


def _read(row: dict[str, Any]) -> str:
    """What was read where the expected text should be (the image's other words left out)."""
    found = row.get("text_found") or ""
    return " / ".join(read_lines(row["text_expected"], found)) or found.replace("\n", " / ")


def _verdict(row: dict[str, Any]) -> str:
    ok = row.get("text_ok")
    return "right" if ok is True else ("MISSPELT" if ok is False else "UNREAD")


def _label(row: dict[str, Any]) -> str:
    label = str(row["row_id"])
    if (row.get("n") or 1) > 1 and row.get("image_index") is not None:
        label += f" #{row['image_index'] + 1}"
    return label


def _rejects(store: ObjectStore, runs: Sequence[str]) -> str:
    """The manifest rows each of ``runs`` rejected, in one table with a run column."""
    body = []
    for run in runs:
        try:
            data = store.get(rejects_key(run))
        except (StorageError, StorageTransientError):
            continue  # no rejects file: the run rejected nothing (or it is unreadable)
        body += [
            [run, str(r["row_number"]), r.get("id") or "", r["column"], r["reason"]]
            for r in pq.read_table(io.BytesIO(data)).to_pylist()
        ]
    where = f"run {runs[0]}" if len(runs) == 1 else f"{len(runs)} runs"
    title = f"Rejected manifest rows ({len(body)}, {where})"
    head = ["run", "row", "id", "column", "reason"]
    return _table(title, head, body, numeric={1}, empty="none")


def _gallery(
    store: ObjectStore,
    rows: Sequence[dict[str, Any]],
    origins: Sequence[Origin],
    max_images: int,
    currency: str,
    image_link: ImageLink | None,
    decisions: dict[catalog_review.ImageId, catalog_review.Decision] | None = None,
) -> str:
    shown = rows[:max_images]
    pairs = zip(shown, origins[: len(shown)], strict=True)
    figures = [
        _figure(store, row, origin, currency, image_link, decisions) for row, origin in pairs
    ]
    more = len(rows) - len(shown)
    tail = f"<p class=meta>… and {more} more rows not shown</p>" if more > 0 else ""
    return f"<h2>Images ({len(rows)})</h2><section class=grid>{''.join(figures)}</section>{tail}"


def _figure(
    store: ObjectStore,
    row: dict[str, Any],
    origin: Origin,
    currency: str,
    image_link: ImageLink | None,
    decisions: dict[catalog_review.ImageId, catalog_review.Decision] | None = None,
) -> str:
    thumb = catalog_view.load_thumbnail(store, row)
    label = _label(row)
    if thumb is not None:
        uri = "data:image/webp;base64," + base64.b64encode(thumb).decode("ascii")
        picture = f'<img src="{uri}" alt="{escape(label)}">'
        image_key = catalog_view.output_key_of(row)
        href = image_link(image_key) if image_link and image_key else None
        if href:
            title = "open the full-size image"
            picture = f'<a href="{escape(href)}" title="{title}">{picture}</a>'
    else:
        reason = row.get("error_message") or row.get("error_code") or "no image"
        word = escape(_word(row["status"]))
        picture = f"<div class=noimg>{word}<small>{escape(reason)}</small></div>"
    facts = " · ".join(
        escape(str(x))
        for x in (row["model"], row.get("size") or "default size", f"seed {row['seed']}")
    )
    cost = f"{origin.cost:.4f} {escape(origin.currency or currency)}"
    if catalog_view.has_image(row):
        paid = "rendered in this run" if origin.run_id == row["run_id"] else "rendered by run"
        cost = f"{paid} {escape(origin.run_id)}: {cost}"
    else:
        cost = f"run {escape(row['run_id'])}: {cost}"
    tags = "".join(
        f"<span class=tag>{escape(f'{k}={v}' if v else k)}</span>"
        for k, v in sorted(row["tags"].items())
    )
    status = escape(row["status"])
    image = catalog_review.image_of(row) if decisions is not None else None
    attrs, controls = ("", "") if image is None else _review_controls(row, image, decisions)
    if row.get("target_size"):
        delivered = escape(f"delivered at {row['target_size']}")
        if image_link is not None and catalog_view.has_image(row):
            href = image_link(delivered_key(row["request_key"], int(row["image_index"] or 0)))
            delivered = f'<a href="{escape(href)}">{delivered}</a>' if href else delivered
        facts += f" · {delivered}"
    return (
        f"<figure{attrs}>{picture}<figcaption><b>{escape(label)}</b>"
        f" <span class='st {status}'>{escape(_word(row['status']))}</span>"
        f"<br><small>{facts}</small><br><small class=paid>{cost}</small>"
        f"{_text_lines(row)}<p>{escape(row['prompt'])}</p>{tags}{controls}</figcaption></figure>"
    )


def _review_controls(
    row: dict[str, Any],
    image: catalog_review.ImageId,
    decisions: dict[catalog_review.ImageId, catalog_review.Decision] | None,
) -> tuple[str, str]:
    """A reviewable card's data attributes (its image, and any decision recorded) and its
    buttons and note."""
    recorded = (decisions or {}).get(image)
    values = {
        "run": row["run_id"],
        "row": row["row_id"],
        "index": str(image[2]),
        "key": row["request_key"],
        "recorded": recorded.decision if recorded else "",
        "note": recorded.note if recorded else "",
    }
    attrs = "".join(f' data-{name}="{escape(value)}"' for name, value in values.items())
    controls = (
        "<div class=review><button type=button class=approve>Approve</button>"
        "<button type=button class=reject>Reject</button>"
        f'<textarea rows=2 placeholder="note">{escape(values["note"])}</textarea></div>'
    )
    return attrs, controls


def _review_bar(store: ObjectStore, rows: Sequence[dict[str, Any]]) -> str:
    images = sum(1 for row in rows if catalog_review.image_of(row) is not None)
    return (
        f'<section id=review data-dest="{escape(store.root_uri)}"><h2>Review</h2>'
        f"<p class=meta>Approve or reject each of the {images} image(s) and add a note; "
        "your decisions stay in this browser until you export them, then record them with "
        "<code>qwbatch review DEST decisions.json</code>.</p>"
        "<p><b id=review-count></b> <button type=button id=review-export>"
        "Export decisions</button></p></section>"
    )


def _text_lines(row: dict[str, Any]) -> str:
    """Expected beside read, for a row whose text was checked (marked when it failed)."""
    if not row.get("text_expected"):
        return ""
    ok = row.get("text_ok") is True
    read = _read(row) or "—"
    rerolls = row.get("rerolls") or 0
    again = f" · {rerolls} re-roll(s)" if rerolls else ""
    return (
        f"<dl class='text {'ok' if ok else 'bad'}'><dt>expected</dt>"
        f"<dd>{escape(' | '.join(row['text_expected']))}</dd><dt>read</dt>"
        f"<dd>{escape(read)}</dd><dt>verdict</dt><dd>{escape(_verdict(row) + again)}</dd></dl>"
    )


def _table(
    title: str,
    head: Sequence[str],
    body: Iterable[Sequence[str]],
    *,
    numeric: set[int] | frozenset[int] = frozenset(),
    empty: str = "nothing",
) -> str:
    rows = list(body)
    if not rows:
        return f"<h2>{escape(title)}</h2><p class=meta>{escape(empty)}</p>"

    def cell(tag: str, i: int, text: str) -> str:
        cls = " class=num" if i in numeric else ""
        return f"<{tag}{cls}>{escape(text)}</{tag}>"

    thead = "".join(cell("th", i, h) for i, h in enumerate(head))
    tbody = "".join(
        "<tr>" + "".join(cell("td", i, c) for i, c in enumerate(r)) + "</tr>" for r in rows
    )
    return f"<h2>{escape(title)}</h2><table><tr>{thead}</tr>{tbody}</table>"


_PAGE = """<!doctype html>
<html lang=en><head><meta charset=utf-8>
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; img-src data:; font-src data:; style-src 'unsafe-inline'{script_src}">
<meta name=viewport content="width=device-width, initial-scale=1">
<title>{title}</title><style>{style}</style></head>
<body>
{body}
{script}
</body></html>
"""

#: Review mode's script: decisions in localStorage, the export as a download. Kept plain
#: (no template values) so its hash in the page's Content-Security-Policy is fixed.
_REVIEW_SCRIPT = """
(() => {
  const bar = document.getElementById("review");
  const dest = bar.dataset.dest;
  const storeKey = "qwbatch-review:" + dest;
  let state = {};
  try { state = JSON.parse(localStorage.getItem(storeKey) || "{}"); } catch (e) { state = {}; }
  const figures = [...document.querySelectorAll("figure[data-key]")];
  const idOf = f => JSON.stringify([f.dataset.run, f.dataset.row, f.dataset.index]);
  const verdictOf = f => (state[idOf(f)] || {}).decision || f.dataset.recorded || "";
  function show(f) {
    const verdict = verdictOf(f);
    f.classList.toggle("approved", verdict === "approved");
    f.classList.toggle("rejected", verdict === "rejected");
  }
  function count() {
    const verdicts = figures.map(verdictOf);
    const n = v => verdicts.filter(x => x === v).length;
    document.getElementById("review-count").textContent =
      `${n("approved")} approved, ${n("rejected")} rejected, ${n("")} to review`;
  }
  function save() { localStorage.setItem(storeKey, JSON.stringify(state)); count(); }
  function decide(f, decision) {
    state[idOf(f)] = {
      run_id: f.dataset.run, row_id: f.dataset.row, image_index: Number(f.dataset.index),
      request_key: f.dataset.key, decision: decision,
      note: f.querySelector("textarea").value, reviewed_at: Date.now() / 1000,
    };
    save();
    show(f);
  }
  function exportText() {
    const decisions = Object.values(state).filter(d => d.decision);
    return JSON.stringify({format: "qwbatch-review/1", dest: dest, decisions: decisions}, null, 1);
  }
  function download() {
    const link = document.createElement("a");
    link.href = "data:application/json;charset=utf-8," + encodeURIComponent(exportText());
    link.download = "decisions.json";
    document.body.appendChild(link);
    link.click();
    link.remove();
  }
  for (const f of figures) {
    const note = f.querySelector("textarea");
    const saved = state[idOf(f)];
    if (saved) note.value = saved.note || "";
    f.querySelector("button.approve").addEventListener("click", () => decide(f, "approved"));
    f.querySelector("button.reject").addEventListener("click", () => decide(f, "rejected"));
    note.addEventListener("input", () => {
      const d = state[idOf(f)];
      if (d) { d.note = note.value; d.reviewed_at = Date.now() / 1000; save(); }
    });
    show(f);
  }
  document.getElementById("review-export").addEventListener("click", download);
  window.qwbatchReview = {exportText: exportText, count: () => figures.length};
  count();
})();
"""

_REVIEW_STYLE = """
.review{display:flex;gap:6px;flex-wrap:wrap;margin-top:6px}
.review button{font:inherit;font-size:12px;padding:2px 10px;border:1px solid #bbb;
border-radius:4px;background:#fff;cursor:pointer}
.review textarea{flex:1 1 100%;font:inherit;font-size:12px}
figure.approved{border:3px solid #2e8b57}figure.rejected{border:3px solid #c0392b;opacity:.8}
figure.approved .approve{background:#2e8b57;color:#fff}
figure.rejected .reject{background:#c0392b;color:#fff}
"""

_STYLE = (
    (
        f'body{{font:14px/1.45 "{FAMILY}",'  # the embedded subset first: the same look everywhere
    )
    + """system-ui,-apple-system,"Segoe UI","Noto Sans","Noto Sans CJK SC",
"PingFang SC","Microsoft YaHei",sans-serif;margin:24px;background:#f6f5f2;color:#222}
h1{margin:0 0 4px}.row{display:flex;gap:32px;flex-wrap:wrap}
h2{margin:28px 0 8px;font-size:18px}.meta{color:#666;margin:0}
.cards{display:flex;gap:12px;margin-top:16px;flex-wrap:wrap}
.card{background:#fff;border:1px solid #e2e0db;border-radius:8px;padding:10px 16px;min-width:110px}
.card b{display:block;font-size:22px}.card span{color:#666}
table{border-collapse:collapse;background:#fff;border:1px solid #e2e0db}
th,td{padding:4px 10px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{background:#efede8}.num{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:14px}
figure{margin:0;background:#fff;border:1px solid #e2e0db;border-radius:8px;overflow:hidden}
figure img{display:block;width:100%;height:220px;object-fit:contain;background:#fafafa}
.noimg{height:220px;display:flex;flex-direction:column;justify-content:center;
align-items:center;background:#ece9e6;color:#b02828;font-weight:600;padding:0 12px;
text-align:center}.noimg small{font-weight:400;color:#444;margin-top:6px}
figcaption{padding:8px 10px}figcaption p{margin:6px 0;color:#444}
.st{font-size:12px;padding:1px 6px;border-radius:4px;background:#e6f0e6;color:#225522}
.text{display:grid;grid-template-columns:auto 1fr;gap:0 8px;margin:6px 0;font-size:12px;
padding:4px 6px;border-radius:4px}.text dt{color:#666}.text dd{margin:0}
.text.ok{background:#eef6ee}.text.bad{background:#f9e3e3;color:#8a1c1c}
.st.failed,.st.moderated,.st.ambiguous,.st.expired,.st.text_mismatch{background:#f6e0e0;
color:#a02020}.st.skipped_budget{background:#f7eed8;color:#7a5a10}.st.deduplicated{background:#e8ecf4;color:#2a3f66}
.tag{display:inline-block;font-size:12px;background:#f0eee9;border-radius:4px;
padding:0 6px;margin:0 4px 4px 0;color:#555}
"""
)
