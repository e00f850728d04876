"""Review decisions: a person approves or rejects each image, with a note, beside the catalog.

The HTML report's review mode (``qwbatch report DEST --html page.html --review``) keeps the
decisions in the browser and exports them as a small JSON file::

    {"format": "qwbatch-review/1", "dest": "file:///…/out",
     "decisions": [{"run_id": "…", "row_id": "ad-mrec", "image_index": 0,
                    "request_key": "…", "decision": "rejected", "note": "logo cut off",
                    "reviewed_at": 1767225600.0}]}

:func:`record_decisions` (``qwbatch review DEST decisions.json``) checks each decision
against the catalog (its run, row and image must be an image there) and writes the good
ones as one Parquet part under ``DEST/reviews/`` (:func:`qwbatch.storage.layout.review_key`;
DuckDB: ``select * from 'out/reviews/*.parquet'``); a decision naming no such image is
refused with its reason and the others are recorded.

A decision is about an image: the row's ``request_key`` and ``image_index``. A later run
that deduplicates the row shows the same image, so the decision still holds there; a
rerender (new seed, new key) is a new image, not yet reviewed. The newest decision about an
image wins (``reviewed_at``, then the order recorded).
"""

from __future__ import annotations

import io
import json
import math
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal, get_args

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qwbatch.catalog import table as catalog
from qwbatch.core.errors import ConfigError
from qwbatch.storage.layout import REVIEWS_PREFIX, review_key
from qwbatch.storage.stores import ObjectStore

Verdict = Literal["approved", "rejected"]
VERDICTS: Final = get_args(Verdict)
#: The decisions file's format tag.
FORMAT: Final = "qwbatch-review/1"
#: Longest note kept, in characters.
MAX_NOTE_CHARS: Final = 2000

SCHEMA: Final = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("row_id", pa.string(), nullable=False),
        pa.field("image_index", pa.int32(), nullable=False),
        pa.field("request_key", pa.string(), nullable=False),
        pa.field("decision", pa.string(), nullable=False),
        pa.field("note", pa.string()),
        pa.field("reviewed_at", pa.timestamp("ms", tz="UTC")),
    ]
)

#: An image: (row id, request key, image index).
ImageId = tuple[str, str, int]


@dataclass(frozen=True, slots=True)
class Decision:
    """One person's verdict on one image (``reviewed_at``: POSIX seconds)."""

    run_id: str
    row_id: str
    image_index: int
    request_key: str
    decision: Verdict
    note: str = ""
    reviewed_at: float = 0.0

    @property
    def image(self) -> ImageId:
        return (self.row_id, self.request_key, self.image_index)


@dataclass(slots=True)
class Recorded:
    """What :func:`record_decisions` did: decisions recorded, and those refused with why."""

    recorded: int = 0
    approved: int = 0
    rejected: int = 0
    refused: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    key: str | None = None

    def lines(self) -> list[str]:
        lines = [
            f"recorded {self.recorded} decision(s): {self.approved} approved, "
            f"{self.rejected} rejected" + (f" → {self.key}" if self.key else "")
        ]
        for item, reason in self.refused:
            where = f"{item.get('run_id')}/{item.get('row_id')}#{item.get('image_index')}"
            lines.append(f"  refused {where}: {reason}")
        return lines


def parse_decisions(data: bytes) -> list[dict[str, Any]]:
    """The decision objects of a decisions file; ConfigError when it is not one."""
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"not a decisions file (JSON): {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ConfigError(f'not a decisions file: expected {{"format": "{FORMAT}", …}}')
    items = document.get("decisions")
    if not isinstance(items, list):
        raise ConfigError("a decisions file holds a list under 'decisions'")
    return [item if isinstance(item, dict) else {"_": item} for item in items]


def _decision(item: dict[str, Any], images: dict[tuple[str, str, int], str]) -> Decision | str:
    """A checked Decision, or why ``item`` is refused (``images``: (run, row, index) → key)."""
    run_id, row_id, index = item.get("run_id"), item.get("row_id"), item.get("image_index")
    if not (isinstance(run_id, str) and isinstance(row_id, str)):
        return "run_id and row_id must be strings"
    if isinstance(index, bool) or not isinstance(index, int):
        return "image_index must be an integer"
    verdict: Verdict
    if item.get("decision") == "approved":
        verdict = "approved"
    elif item.get("decision") == "rejected":
        verdict = "rejected"
    else:
        return f"decision must be one of {', '.join(VERDICTS)}, got {item.get('decision')!r}"
    note = item.get("note") or ""
    if not isinstance(note, str):
        return "note must be text"
    at = item.get("reviewed_at") or time.time()
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
        return "reviewed_at must be POSIX seconds"
    key = images.get((run_id, row_id, index))
    if key is None:
        return "no such image in the catalog (run, row and image index)"
    if item.get("request_key") not in (None, key):
        return "request_key differs from the catalog's for this image"
    return Decision(run_id, row_id, index, key, verdict, note[:MAX_NOTE_CHARS], float(at))


def _catalog_images(store: ObjectStore) -> dict[tuple[str, str, int], str]:
    """(run id, row id, image index) → request key, for every catalog row with an image."""
    table = catalog.catalog_columns(
        store, ("run_id", "row_id", "request_key", "image_index", "output_uri")
    )
    table = table.filter(
        pc.and_(pc.is_valid(table["image_index"]), pc.is_valid(table["output_uri"]))
    )
    return {
        (run, row, index): key
        for run, row, key, index in zip(
            table["run_id"].to_pylist(),
            table["row_id"].to_pylist(),
            table["request_key"].to_pylist(),
            table["image_index"].to_pylist(),
            strict=True,
        )
    }


def record_decisions(store: ObjectStore, items: Iterable[dict[str, Any]]) -> Recorded:
    """Check each decision object against the catalog and write the good ones as one part
    under ``reviews/``; refused ones are listed with their reason (see the module docs)."""
    images = _catalog_images(store)
    done = Recorded()
    good: list[Decision] = []
    for item in items:
        outcome = _decision(item, images)
        if isinstance(outcome, str):
            done.refused.append((item, outcome))
            continue
        good.append(outcome)
    if good:
        done.key = write_decisions(store, good)
    done.recorded = len(good)
    done.approved = sum(d.decision == "approved" for d in good)
    done.rejected = done.recorded - done.approved
    return done


def write_decisions(store: ObjectStore, decisions: Sequence[Decision]) -> str:
    """Write ``decisions`` as one new Parquet part under ``reviews/``; its key."""
    rows = [asdict(d) for d in decisions]
    for row in rows:
        row["reviewed_at"] = int(row["reviewed_at"] * 1000)
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    key = review_key(f"{stamp}-{secrets.token_hex(4)}")
    store.put(key, sink.getvalue(), content_type="application/x-parquet")
    return key


def read_decisions(store: ObjectStore) -> dict[ImageId, Decision]:
    """The newest decision about each image recorded in ``store``."""
    found: dict[ImageId, Decision] = {}
    keys = sorted(key for key in store.list(REVIEWS_PREFIX) if key.endswith(".parquet"))
    for key in keys:
        for row in pq.read_table(io.BytesIO(store.get(key))).to_pylist():
            at = row["reviewed_at"]
            seconds = at.timestamp() if at is not None else 0.0
            decision = Decision(
                row["run_id"],
                row["row_id"],
                row["image_index"],
                row["request_key"],
                row["decision"],
                row.get("note") or "",
                seconds,
            )
            old = found.get(decision.image)
            if old is None or decision.reviewed_at >= old.reviewed_at:
                found[decision.image] = decision
    return found


def image_of(row: dict[str, Any]) -> ImageId | None:
    """The image a catalog row shows, or None for a row without one."""
    if row.get("image_index") is None or not row.get("output_uri"):
        return None
    return (row["row_id"], row["request_key"], int(row["image_index"]))


def approved(decisions: dict[ImageId, Decision]) -> frozenset[ImageId]:
    """The images whose newest decision is an approval."""
    return frozenset(image for image, d in decisions.items() if d.decision == "approved")


def rejected_requests(decisions: dict[ImageId, Decision]) -> frozenset[tuple[str, str]]:
    """(row id, request key) of each request with an image whose newest decision rejects it."""
    return frozenset(
        (d.row_id, d.request_key) for d in decisions.values() if d.decision == "rejected"
    )
