"""Every key layout under DEST: where each kind of object lives in the store.

Each kind of object has one function (or constant) here, and every module that writes, lists
or reads it takes its key from here; no other module spells out a prefix. ``<ab>`` is the first
two characters of the key that follows it, (hex), which spreads them over 256 folders::

    DEST/
    ├── images/<ab>/<request_key>/<i>.png                 output_key
    ├── images/<ab>/<request_key>/request.json            request_doc_key
    ├── thumbs/<ab>/<request_key>/<i>.webp                thumb_key
    ├── delivered/<ab>/<request_key>/<i>.png              delivered_key
    ├── inputs/<ab>/<sha256 of the original bytes>        staged_key
    ├── catalog/part-<run_id>-<label>[-<8 hex>].parquet   part_key
    ├── catalog/part-compact-<stamp>-<6 hex>-<NNN>.parquet  compacted_part_key
    ├── catalog/_compaction/<compaction>.json             compaction_marker_key
    ├── rejects/rejects-<run_id>.parquet                  rejects_key
    ├── reviews/review-<stamp>-<8 hex>.parquet            review_key
    ├── quarantine/catalog/…                              quarantine_key
    ├── manifests/table-<24 hex>.parquet                  table_manifest_key
    ├── lease/run.json                                    lease_key
    ├── limits/learned/<model>@<scope>.json               learned_limit_key
    └── runs/
        ├── _index/<fingerprint>/<run_id>                 index_key
        └── <run_id>/
            ├── plan.json                                 plan_key
            ├── summary.json                              summary_key
            ├── contact-sheet.png                         run_sheet_key
            ├── shards/shard-<NNNNN>.jsonl.zst            shard_key
            ├── shards/shard-<NNNNN>.result.json          shard_result_key
            ├── leases/shard-<NNNNN>.json                 shard_lease_key
            └── journal/shard-<NNNNN>/<writer>-<seq>.jsonl  journal_key

What they hold: an output image (as the model rendered it) and, when its object metadata
cannot hold the whole request, the request beside it (:mod:`qwbatch.storage.metadata`); the
output's thumbnail; the output cropped or padded to the request's channel size
(``target_size``), when it has one; an edit input
as it was sent (:mod:`qwbatch.inputs.staging`); the catalog's Parquet parts, one per shard of a
run, and the markers of a compaction in progress (:mod:`qwbatch.runs.compaction`); a run's
rejected manifest rows; the review decisions recorded by ``qwbatch review``
(:mod:`qwbatch.catalog.review`); manifests given to the Python API as tables, saved by the hash of
their bytes so a rerun finds the same file (:mod:`qwbatch.api.manifests`); catalog parts too
broken to read, set aside by ``catalog rebuild``; the lease of the run that holds DEST, and
of each shard while a worker renders it (:mod:`qwbatch.storage.lease`); the request limit
learned per model and account, for the next run (:mod:`qwbatch.runs.learned_limits`); an index
entry per run, keyed by what it renders, so a rerun finds the run to resume
(:mod:`qwbatch.runs.records`); and each run's plan, summary, contact sheet, shard files, shard
results (:mod:`qwbatch.render.shard_results`) and journal (:mod:`qwbatch.render.journal`).

Two shapes make most keys: a request's objects spread by the first two characters of its key
(:func:`_spread`), and a run's records under its folder (:func:`run_key`).

A shard's *label* (``shard-00003``) names its journal folder and its catalog part. Keys are
checked by :func:`qwbatch.storage.base.validate_key` wherever they are used.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import pyarrow as pa

#: Every run's records, one folder per run id.
RUNS_PREFIX: Final = "runs/"
IMAGES_PREFIX: Final = "images/"
THUMBS_PREFIX: Final = "thumbs/"
#: Outputs brought to their request's channel size (``target_size``).
DELIVERED_PREFIX: Final = "delivered/"
#: Staged edit inputs, by the sha256 of their original bytes.
STAGE_PREFIX: Final = "inputs/"
CATALOG_PREFIX: Final = "catalog/"
#: Markers of compactions in progress (``_`` keeps them out of pyarrow's dataset reads).
COMPACTION_PREFIX: Final = f"{CATALOG_PREFIX}_compaction/"
REJECTS_PREFIX: Final = "rejects/"
#: Review decisions (approve / reject an image), one Parquet part per ``qwbatch review``.
REVIEWS_PREFIX: Final = "reviews/"
QUARANTINE_PREFIX: Final = "quarantine/"
#: One empty object per run, keyed by what it renders: how a rerun finds the run to resume.
INDEX_PREFIX: Final = f"{RUNS_PREFIX}_index/"
#: Manifests given to the Python API as tables.
TABLE_MANIFEST_PREFIX: Final = "manifests/"

#: Name of the request document written beside the images when metadata cannot hold it.
REQUEST_DOC: Final = "request.json"

#: Name ending of the shard files written now (zstd, :mod:`qwbatch.plan.shard_codec`).
SHARD_SUFFIX: Final = ".jsonl.zst"
#: Name endings of shard files, the current one first (``.jsonl.gz``: written before zstd).
SHARD_SUFFIXES: Final = (SHARD_SUFFIX, ".jsonl.gz")
#: Name ending of a shard's result file, which replaces the shard file's own ending.
SHARD_RESULT_SUFFIX: Final = ".result.json"
_SHARD_NAME: Final = "shard-"


# -- outputs and inputs -----------------------------------------------------------------------


def _spread(prefix: str, key: str) -> str:
    """``<prefix><ab>/<key>``: a content-addressed folder (or object), ``<ab>`` the first two
    characters of ``key`` (hex), which spread keys over 256 folders."""
    return f"{prefix}{key[:2]}/{key}"


def output_key(request_key: str, index: int) -> str:
    """Content-addressed key of a request's ``index``-th output image."""
    return f"{_spread(IMAGES_PREFIX, request_key)}/{index}.png"


_OUTPUT_KEY_RE = re.compile(rf"{IMAGES_PREFIX}[0-9a-f]{{2}}/([0-9a-f]{{64}})/(\d+)\.png$")


def output_of(output: str | None, request_key: str, index: int) -> tuple[str, int]:
    """``(request key, index)`` of the output a catalog row points at (its ``output_key``
    or ``output_uri``): usually the row's own, but a row whose text was re-rolled keeps the
    image of a re-roll, which lives under that re-roll's request key."""
    match = _OUTPUT_KEY_RE.search(output or "")
    return (match[1], int(match[2])) if match else (request_key, index)


def output_keys(request_keys: pa.Array, indexes: pa.Array) -> pa.Array:
    """:func:`output_key` for whole Arrow columns at once (null where an index is null)."""
    import pyarrow as pa  # only the plan's Arrow paths need it: layout stays light to import
    import pyarrow.compute as pc

    return pc.binary_join_element_wise(
        IMAGES_PREFIX,
        pc.utf8_slice_codeunits(request_keys, 0, 2),
        "/",
        request_keys,
        "/",
        pc.cast(indexes, pa.string()),
        ".png",
        "",
    )


def delivered_key(request_key: str, index: int) -> str:
    """Key of a request's ``index``-th output at its channel size (``target_size``)."""
    return f"{_spread(DELIVERED_PREFIX, request_key)}/{index}.png"


def delivered_keys(request_keys: pa.Array, indexes: pa.Array, targets: pa.Array) -> pa.Array:
    """:func:`delivered_key` for whole Arrow columns (null where there is no target)."""
    import pyarrow.compute as pc

    keys = output_keys(request_keys, indexes)
    delivered = pc.replace_substring(keys, IMAGES_PREFIX, DELIVERED_PREFIX, max_replacements=1)
    return pc.if_else(pc.is_valid(targets), delivered, None)


def request_doc_key(request_key: str) -> str:
    """The request document beside a request's output images."""
    return f"{_spread(IMAGES_PREFIX, request_key)}/{REQUEST_DOC}"


def thumb_key(request_key: str, index: int) -> str:
    """Key of the thumbnail of a request's ``index``-th output image."""
    return f"{_spread(THUMBS_PREFIX, request_key)}/{index}.webp"


def staged_key(sha256: str) -> str:
    """The staged input whose original bytes have this sha256 (hex)."""
    return _spread(STAGE_PREFIX, sha256)


# -- the catalog ------------------------------------------------------------------------------


def part_key(run_id: str, label: str, suffix: str = "") -> str:
    """A catalog part of a run: ``label`` names the shard (or ``plan``, ``images``…) it holds."""
    return f"{run_parts_prefix(run_id)}{label}{suffix}.parquet"


def run_parts_prefix(run_id: str) -> str:
    """The prefix every catalog part of one run starts with."""
    return f"{CATALOG_PREFIX}part-{run_id}-"


def catalog_key(name: str) -> str:
    """The key of the catalog part named ``name`` (the last segment of its key or URI)."""
    return f"{CATALOG_PREFIX}{name}"


def compaction_name(stamp: str, token: str) -> str:
    """A compaction's name: its UTC ``stamp`` (``%Y%m%dT%H%M%SZ``) and a random hex ``token``."""
    return f"part-compact-{stamp}-{token}"


def compacted_part_key(compaction: str, index: int) -> str:
    """The ``index``-th merged part a compaction writes."""
    return f"{CATALOG_PREFIX}{compaction}-{index:03d}.parquet"


def compaction_marker_key(compaction: str) -> str:
    """The marker naming a compaction's new parts and the parts they replace."""
    return f"{COMPACTION_PREFIX}{compaction}.json"


def rejects_key(run_id: str) -> str:
    """A run's rejected manifest rows, beside the catalog."""
    return f"{REJECTS_PREFIX}rejects-{run_id}.parquet"


def review_key(name: str) -> str:
    """Key of one recorded batch of review decisions (``name``: stamp and random hex)."""
    return f"{REVIEWS_PREFIX}review-{name}.parquet"


def quarantine_key(key: str) -> str:
    """Where an unreadable object at ``key`` is set aside."""
    return f"{QUARANTINE_PREFIX}{key}"


# -- a run's records --------------------------------------------------------------------------


def run_key(run_id: str, name: str) -> str:
    """``runs/<run_id>/<name>``: one of a run's records (``name`` may hold ``/``; a name
    ending in ``/`` is a folder of them)."""
    return f"{RUNS_PREFIX}{run_id}/{name}"


def run_prefix(run_id: str) -> str:
    """The folder of every record of one run."""
    return run_key(run_id, "")


def plan_key(run_id: str) -> str:
    return run_key(run_id, "plan.json")


def summary_key(run_id: str) -> str:
    return run_key(run_id, "summary.json")


def run_sheet_key(run_id: str) -> str:
    """The contact sheet a run draws of its own outputs."""
    return run_key(run_id, "contact-sheet.png")


def index_prefix(fingerprint: str) -> str:
    """The index entries of every run of what ``fingerprint`` names."""
    return f"{INDEX_PREFIX}{fingerprint}/"


def index_key(fingerprint: str, run_id: str) -> str:
    return f"{index_prefix(fingerprint)}{run_id}"


def shards_prefix(run_id: str) -> str:
    """The folder of a run's shard files and their results."""
    return run_key(run_id, "shards/")


def shard_key(run_id: str, index: int) -> str:
    """The ``index``-th shard file of a run, as written now."""
    return f"{shards_prefix(run_id)}{_SHARD_NAME}{index:05d}{SHARD_SUFFIX}"


def shard_label(shard_key: str) -> str:
    """``runs/<run>/shards/shard-00003.jsonl.zst`` → ``shard-00003``."""
    return shard_key.rsplit("/", 1)[-1].split(".", 1)[0]


def shard_index(name: str) -> int | None:
    """The ``NNNNN`` of a shard file's or result's name (``shard-00003.…``); None for others."""
    number = name.removeprefix(_SHARD_NAME).split(".", 1)[0]
    return int(number) if name.startswith(_SHARD_NAME) and number.isdigit() else None


def shard_result_key(shard_key: str) -> str:
    """The key of a shard's result file: beside the shard file, ``….result.json``."""
    for suffix in SHARD_SUFFIXES:  # .jsonl.zst, or .jsonl.gz in a run planned before
        if shard_key.endswith(suffix):
            return shard_key.removesuffix(suffix) + SHARD_RESULT_SUFFIX
    return shard_key + SHARD_RESULT_SUFFIX


def is_shard_result(key: str) -> bool:
    return key.endswith(SHARD_RESULT_SUFFIX)


def journal_prefix(run_id: str, label: str | None = None) -> str:
    """``runs/<run_id>/journal/`` or, with a shard label, that shard's folder."""
    return run_key(run_id, f"journal/{label}/" if label else "journal/")


def journal_key(prefix: str, writer: str, seq: int) -> str:
    """One flush of a journal ``writer`` into a shard's folder (:func:`journal_prefix`)."""
    return f"{prefix}{writer}-{seq:08d}.jsonl"


def table_manifest_key(sha256_hex: str) -> str:
    """A table manifest whose Parquet bytes hash to ``sha256_hex`` (its first 24 digits)."""
    return f"{TABLE_MANIFEST_PREFIX}table-{sha256_hex[:24]}.parquet"


# -- the run that holds DEST ------------------------------------------------------------------


def lease_key() -> str:
    """The lease a run holds on DEST while it plans and renders (``storage.lease``)."""
    return "lease/run.json"


def shard_lease_key(shard_key: str) -> str:
    """The lease of the worker rendering one shard (its heartbeat, ``storage.lease``)."""
    run_id = shard_key.split("/", 2)[1]
    return run_key(run_id, f"leases/{shard_label(shard_key)}.json")


# -- limits -----------------------------------------------------------------------------------


def learned_limit_key(scope: str, model: str) -> str:
    """Where the request limit learned for ``model`` on account ``scope`` is kept for the
    next run (JSON; see ``qwbatch.limits.learning.Learned``). Both names are quoted whole."""
    from urllib.parse import quote

    return f"limits/learned/{quote(model, safe='')}@{quote(scope, safe='')}.json"
