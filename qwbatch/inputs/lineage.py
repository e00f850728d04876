"""Lineage: edits of earlier outputs, named by catalog row, and the walk back through them.

An edit input may name an earlier output in two ways: by its ``output_uri`` (read from the
store like any ``s3://`` or ``file://`` input), or as ``catalog:<row id>``, which is looked up
in the destination's catalog: the newest succeeded (or deduplicated) row with that id, its
image 0, or image *k* with ``catalog:<row id>#<k>``. A row id that itself ends in ``#<k>`` is
matched whole first.

The link is content: an input's ``input_sha256`` is the sha256 of the bytes it was given,
and for an earlier output that is the ``sha256`` the catalog records for it. :func:`trace`
follows those links back from a row to the original files, however many edits deep::

    step-2  "add snow"            input_sha256 = [a1…]
      └─ step-1 (sha256 a1…)  "put it on marble"   input_sha256 = [9f…]
           └─ photos/mug.jpg (9f…, not an output: an original)

A chained edit needs its parent's output to exist when it is planned: chain across runs
(render step 1, then step 2), not within one manifest.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from qwbatch.catalog import table as catalog
from qwbatch.core.errors import InputError
from qwbatch.storage.stores import ObjectStore

#: The prefix of an input that names an earlier output by its catalog row id.
CATALOG_REF = "catalog:"
#: Statuses whose rows name a stored output.
_WITH_OUTPUT = ("succeeded", "deduplicated")
_REF_COLUMNS = ("row_id", "image_index", "status", "output_uri", "finished_at")


def parse_ref(ref: str) -> list[tuple[str, int]]:
    """The (row id, image index) pairs ``catalog:…`` may mean, most literal first."""
    body = ref.removeprefix(CATALOG_REF).strip()
    if not body:
        raise InputError("catalog: needs a row id (catalog:<row id> or catalog:<row id>#<k>)")
    readings = [(body, 0)]
    stem, sep, index = body.rpartition("#")
    if sep and stem and index.isdigit():
        readings.append((stem, int(index)))
    return readings


class CatalogRefs:
    """Resolves ``catalog:<row id>[#k]`` to the output URI the catalog records for it.

    Look-ups are cached; :meth:`prefetch` fetches many ids with one pass over the catalog
    (the planner calls it once per manifest batch). Thread-safe.
    """

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        #: (row id, image index) → output URI; ids looked up and found nothing stay absent.
        self._outputs: dict[tuple[str, int], str] = {}
        self._looked_up: set[str] = set()

    def prefetch(self, refs: Iterable[str]) -> None:
        """Look up the row ids of every ``catalog:`` ref in ``refs`` in one catalog pass."""
        ids: set[str] = set()
        for ref in refs:
            if ref.startswith(CATALOG_REF):
                try:
                    ids.update(row_id for row_id, _ in parse_ref(ref))
                except InputError:
                    continue  # resolve() will say why
        with self._lock:
            ids -= self._looked_up
            if ids:
                self._outputs.update(_latest_outputs(self.store, ids))
                self._looked_up |= ids

    def resolve(self, ref: str) -> str:
        """The output URI ``ref`` names; InputError when the catalog has none."""
        readings = parse_ref(ref)
        self.prefetch([ref])
        with self._lock:
            for reading in readings:
                if reading in self._outputs:
                    return self._outputs[reading]
        row_id, index = readings[-1]
        image = f" image {index}" if index else ""
        raise InputError(
            f"the catalog at {self.store.root_uri} has no stored output{image} for row "
            f"{row_id!r} (an edit can chain only onto outputs of earlier runs)"
        )


def _latest_outputs(store: ObjectStore, ids: set[str]) -> dict[tuple[str, int], str]:
    """(row id, image index) → output URI of the newest row with an output, for ``ids``."""
    wanted = pa.array(sorted(ids), pa.string())
    best: dict[tuple[str, int], tuple[float, str]] = {}
    for table in catalog.iter_parts(store, _REF_COLUMNS):
        mask = pc.and_(
            pc.is_in(table["row_id"], value_set=wanted),
            pc.is_in(table["status"], value_set=pa.array(_WITH_OUTPUT)),
        )
        for row in table.filter(pc.and_kleene(mask, pc.is_valid(table["output_uri"]))).to_pylist():
            key = (row["row_id"], row["image_index"] or 0)
            when = row["finished_at"].timestamp() if row["finished_at"] is not None else 0.0
            if key not in best or when >= best[key][0]:
                best[key] = (when, row["output_uri"])
    return {key: uri for key, (_, uri) in best.items()}


# --------------------------------------------------------------------------- tracing

_TRACE_COLUMNS = (
    "run_id",
    "row_id",
    "request_key",
    "status",
    "mode",
    "model",
    "prompt",
    "image_index",
    "output_uri",
    "sha256",
    "finished_at",
    "input_images",
    "input_sha256",
)


@dataclass(slots=True)
class LineageInput:
    """One input of an edit: as written, its content hash, and the output it came from."""

    uri: str
    sha256: str
    #: The catalog row that produced these bytes; None for an original (not an output).
    parent: LineageNode | None = None


@dataclass(slots=True)
class LineageNode:
    """One output in the chain, with its inputs (empty for a generated image)."""

    row_id: str
    run_id: str
    request_key: str
    mode: str
    model: str
    prompt: str
    output_uri: str | None
    sha256: str | None
    inputs: list[LineageInput] = field(default_factory=list)

    def lines(self, indent: str = "") -> list[str]:
        """The chain as indented text, one output or original per line."""
        short = (self.sha256 or "?")[:12]
        out = [
            f"{indent}{self.row_id}  [{self.mode} {self.model}, run {self.run_id}] "
            f"sha256 {short}  {self.prompt[:60]!r}",
            f"{indent}  -> {self.output_uri}",
        ]
        for position, item in enumerate(self.inputs, start=1):
            if item.parent is None:
                out.append(f"{indent}  Image {position}: {item.uri}  sha256 {item.sha256[:12]}")
            else:
                out.append(f"{indent}  Image {position}: {item.uri}, the output of:")
                out.extend(item.parent.lines(indent + "    "))
        return out


def trace(store: ObjectStore, row_id: str, *, image_index: int = 0) -> LineageNode:
    """The lineage of row ``row_id``'s output (its newest), back to the original inputs.

    An input whose sha256 is the sha256 of a stored output is that output's child; the walk
    continues from there. InputError when the catalog has no output for ``row_id``.
    """
    rows = [
        row
        for table in catalog.iter_parts(store, _TRACE_COLUMNS)
        for row in table.filter(pc.is_in(table["status"], pa.array(_WITH_OUTPUT))).to_pylist()
        if row["output_uri"] is not None
    ]
    by_row: dict[tuple[str, int], dict[str, Any]] = {}
    by_sha: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: r["finished_at"].timestamp() if r["finished_at"] else 0):
        by_row[(row["row_id"], row["image_index"] or 0)] = row
        if row["sha256"]:
            # The first row that produced these bytes: later dedups point at the same object.
            by_sha.setdefault(row["sha256"], row)
    start = by_row.get((row_id, image_index))
    if start is None:
        raise InputError(f"the catalog at {store.root_uri} has no output for row {row_id!r}")
    return _node(start, by_sha, seen=set())


def _node(row: dict[str, Any], by_sha: dict[str, dict[str, Any]], seen: set[str]) -> LineageNode:
    node = LineageNode(
        row_id=row["row_id"],
        run_id=row["run_id"],
        request_key=row["request_key"],
        mode=row["mode"],
        model=row["model"],
        prompt=row["prompt"],
        output_uri=row["output_uri"],
        sha256=row["sha256"],
    )
    seen = seen | {row["sha256"]}
    for uri, sha in zip(row["input_images"] or [], row["input_sha256"] or [], strict=False):
        parent_row = by_sha.get(sha)
        parent = None if parent_row is None or sha in seen else _node(parent_row, by_sha, seen)
        node.inputs.append(LineageInput(uri=uri, sha256=sha, parent=parent))
    return node
