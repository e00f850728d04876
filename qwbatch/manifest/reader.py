"""Manifests: the Parquet schema, a streaming reader that validates every row, and rejects.

A manifest is a Parquet file (or a folder of Parquet part files, as Spark and DuckDB write
them), local or on S3 (``qwbatch.manifest.files``), with one render request per row:

=================  ============================  =============================================
column             required / default            accepted Arrow types
=================  ============================  =============================================
``id``             required, unique              string-like [#s]_, or integer (→ decimal text)
``prompt``         required, non-empty           string-like
``mode``           ``generate``                  string-like: ``generate`` | ``edit``, any case
``model``          ``default_model``             string-like
``negative_prompt``  none                        string-like; empty → none
``size``           none (the model's default)    string-like ``W*H``; ``WxH``, ``W X H`` … too
``n``              1                             integer, whole float/decimal, integer text
``seed``           derived (see ``keys``)        same as ``n``; in [0, 2147483647]
``prompt_extend``  none (the provider's default) bool, 0/1, ``"true"``/``"false"``/``"1"``/``"0"``
``watermark``      false                         same as ``prompt_extend``
``input_images``   none                          list<string-like> (list, large_list, …), one
                                                 string (one image), or a JSON-array string
``tags``           none                          map, list<string>, struct, or a string
``priority``       none                          same as ``n``; higher renders first when a
                                                 budget trims the run (``qwbatch.budget.policy``)
=================  ============================  =============================================

.. [#s] string-like: ``string``, ``large_string``, ``string_view``, UTF-8 ``binary`` and any
   ``dictionary<…>`` of those. Every optional column may be null anywhere, or absent, or of
   Arrow type ``null`` (pandas writes all-None columns so).

Rows are numbered from **0**, in file order (like Arrow, polars and DuckDB's
``file_row_number``); a folder's part files are read in name order and numbered on.

**Tags.** Whatever the form, tags become a sorted tuple of ``(key, value)`` string pairs:
a map or struct gives its entries (null values are dropped; numbers and booleans become
text); a list gives one tag per item, ``"k=v"`` → ``("k", "v")`` and a plain label ``"x"`` →
``("x", "")``; a string holding a JSON object or array is read as that map or list, any other
string is a comma-separated list of items. Keys and values are stripped; a repeated key keeps
its last value; an empty key rejects the row. Tags are not part of the request key.

**Validation.** Each row is checked against its model's rules in the model table (tasks,
sizes, ``n``, prompt lengths in characters); the first problem found rejects the row with a
``Reject(row_number, row_id, column, reason)`` and the good rows go on. ``strict=True`` makes
the first batch holding a bad row raise ``ManifestError`` instead (message: its first few
rejects). A later row whose ``id`` was already seen is rejected as a duplicate even when the
first occurrence was itself rejected for another reason: ids are unique per manifest.
Duplicate ids are found exactly by a first pass over the ``id`` column alone, so memory for
them is one Arrow string per row during that pass and only the repeated ids afterwards.

**Edit inputs** are resolved to the sha256 of their bytes (``resolve_input(uri)`` returns the
hex digest, or an ``InputDigest`` that adds a note for the catalog), once per distinct URI
within a read. A resolver with a ``prefetch(uris)`` method is handed each batch's URIs
first, so it can fetch them concurrently. The default resolver hashes local files under the
manifest's folder (``LocalInputResolver``); a run plans with ``qwbatch.inputs.staging.InputStage``,
which also reads S3, https and earlier outputs and checks and normalises every image.

**Speed.** Work is column-wise per record batch (``qwbatch.manifest.columns`` turns each Arrow
column into Python cells), then one plain function call per row checks the cells and builds
the RenderRequest and its key; no model object per row. ``bench/bench_manifest.py`` measures
a 1,000,000-row read.
"""

from __future__ import annotations

import gc
import hashlib
import os
import re
import unicodedata
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qwbatch.core.errors import ConfigError, ManifestError, PermanentError, StorageError
from qwbatch.core.keys import SEED_MAX, key_and_seed
from qwbatch.core.model_table import ModelSpec, ModelTable, parse_size
from qwbatch.core.settings import Settings
from qwbatch.core.types import Mode, RenderRequest
from qwbatch.manifest.columns import (
    COERCE,
    COLUMN_TYPES,
    REQUIRED_COLUMNS,
    Bad,
    Tags,
    decoded,
    value_type,
)
from qwbatch.manifest.files import (
    ManifestFile,
    RemoteManifestInputs,
    is_remote,
    manifest_files,
)
from qwbatch.manifest.vector import FastRows, Setting, check_block

#: Longest accepted row id, in characters.
MAX_ID_CHARS: Final = 256
#: Input images per edit request (docs/providers/dashscope.md §3.5; the same for every edit model).
MAX_INPUT_IMAGES: Final = 3
#: Rejects quoted in a strict-mode ManifestError.
STRICT_REASONS_SHOWN: Final = 5
#: Message for input URIs whose scheme the default resolver does not read.
UNSUPPORTED_INPUT: Final = (
    "LocalInputResolver reads local files only (qwbatch.inputs.staging.InputStage reads s3://, "
    "https:// and catalog: inputs too)"
)

#: The schema a manifest writer should use; the reader also accepts the variants above.
MANIFEST_SCHEMA: Final = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("mode", pa.string()),
        pa.field("model", pa.string()),
        pa.field("negative_prompt", pa.string()),
        pa.field("size", pa.string()),
        pa.field("n", pa.int32()),
        pa.field("seed", pa.int64()),
        pa.field("prompt_extend", pa.bool_()),
        pa.field("watermark", pa.bool_()),
        pa.field("input_images", pa.list_(pa.string())),
        pa.field("tags", pa.map_(pa.string(), pa.string())),
        pa.field("priority", pa.int32()),
    ]
)

#: Columns of a rejects file.
REJECTS_SCHEMA: Final = pa.schema(
    [
        pa.field("row_number", pa.int64(), nullable=False),
        pa.field("id", pa.string()),
        pa.field("column", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True, slots=True)
class InputDigest:
    """What a resolver knows of one input: the sha256 (hex) of its original bytes, and a
    note for the catalog (where it came from, what was changed to send it; "" if nothing)."""

    sha256: str
    note: str = ""


#: ``uri -> sha256 hex`` (or an InputDigest) of the input image's bytes. Raise a
#: PermanentError (any subclass) to reject the row with its message; any other exception
#: ends the read.
InputResolver = Callable[[str], "str | InputDigest"]


@runtime_checkable
class PrefetchingResolver(Protocol):
    """A resolver that can fetch many inputs at once, ahead of the calls for each."""

    def __call__(self, uri: str) -> str | InputDigest: ...

    def prefetch(self, uris: Iterable[str]) -> None: ...


_MODES: Final[dict[str, Mode]] = {"generate": "generate", "edit": "edit"}
_SCHEME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://|^data:")
_PANDAS_INDEX: Final = re.compile(r"__index_level_\d+__")
_RESERVED: Final = frozenset[str]()  # known columns that are not read yet
_IMAGES_CELL: Final = list(COERCE).index("input_images")  # its cells' place in a batch


# --------------------------------------------------------------------------- public values


@dataclass(frozen=True, slots=True)
class Reject:
    """One refused manifest row: where (0-based row number, id, column) and why."""

    row_number: int
    row_id: str | None
    column: str
    reason: str

    def __str__(self) -> str:
        return f"row {self.row_number} (id {self.row_id!r}), column {self.column!r}: {self.reason}"


@dataclass(frozen=True, slots=True)
class ManifestBatch:
    """The outcome of one record batch: rows ``first_row`` … ``first_row + num_rows - 1``."""

    first_row: int
    num_rows: int
    requests: list[RenderRequest]
    rejects: list[Reject]


@dataclass(frozen=True, slots=True)
class CheckedBlock:
    """One record batch read column-wise (``ManifestReader.blocks``): rows ``first_row`` …
    ``first_row + num_rows - 1``. ``fast`` holds the accepted rows the vectorised checks
    took (``qwbatch.manifest.vector.Block``), ``requests`` the accepted rows the row
    checker took, ``rejects`` the refused ones."""

    first_row: int
    num_rows: int
    fast: pa.Table
    #: The same rows as ``fast``, as Python lists (None when there are none).
    rows: FastRows | None
    requests: list[RenderRequest]
    rejects: list[Reject]


@dataclass(slots=True)
class ManifestSummary:
    """Counts for one read, updated as batches are yielded."""

    path: str
    #: Rows in the manifest according to the Parquet footers.
    total_rows: int
    #: Manifest-level remarks (ignored columns), each reported once.
    warnings: list[str] = field(default_factory=list)
    rows_read: int = 0
    accepted: int = 0
    rejected: int = 0
    batches: int = 0


@dataclass(frozen=True, slots=True)
class DuplicateIds:
    """Ids that occur more than once in a manifest (``candidates``) and, when known, the row
    each occurs at first (``first_rows``): what a reader of a later part of the manifest
    needs to refuse a repeat of an id first seen before its part, as a whole read does."""

    candidates: frozenset[str] = frozenset()
    first_rows: dict[str, int] = field(default_factory=dict)


def rejects_table(rejects: Iterable[Reject]) -> pa.Table:
    """The rejects as an Arrow table (``REJECTS_SCHEMA``), ready for ``pyarrow.parquet``."""
    rows = list(rejects)
    return pa.table(
        {
            "row_number": pa.array([r.row_number for r in rows], pa.int64()),
            "id": pa.array([r.row_id for r in rows], pa.string()),
            "column": pa.array([r.column for r in rows], pa.string()),
            "reason": pa.array([r.reason for r in rows], pa.string()),
        },
        schema=REJECTS_SCHEMA,
    )


# --------------------------------------------------------------------------- input images


class LocalInputResolver:
    """Hash input images that are local files inside the manifest's folder.

    A relative path is taken from ``base_dir``; an absolute path (or ``file://`` URI) must lie
    inside it. Paths are compared after lexical normalisation, so ``..`` cannot climb out;
    symlinks inside the folder are followed (whoever owns the folder placed them). Other
    schemes (``s3://``, ``https://``, ``data:``) are refused for now.
    """

    def __init__(self, base_dir: str | os.PathLike[str]) -> None:
        self.base_dir = Path(os.path.abspath(base_dir))
        self._real_base = Path(os.path.realpath(base_dir))

    def __call__(self, uri: str) -> str:
        """The sha256 hex of the file's bytes; ManifestError or StorageError when refused."""
        path_text = uri
        if _SCHEME.match(uri):
            parts = urlsplit(uri)
            if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost"):
                raise ManifestError(f"{UNSUPPORTED_INPUT} (got {uri!r})")
            path_text = unquote(parts.path)
        raw = Path(path_text)
        path = Path(os.path.normpath(raw if raw.is_absolute() else self.base_dir / raw))
        if not (path.is_relative_to(self.base_dir) or path.is_relative_to(self._real_base)):
            where = "is outside" if raw.is_absolute() else "escapes"
            raise ManifestError(f"input path {uri!r} {where} the manifest's folder {self.base_dir}")
        try:
            with path.open("rb") as handle:
                return hashlib.file_digest(handle, "sha256").hexdigest()
        except FileNotFoundError:
            raise StorageError(f"input image not found: {uri!r} (looked for {path})") from None
        except OSError as exc:
            raise StorageError(f"cannot read input image {uri!r}: {exc.strerror}") from exc


# --------------------------------------------------------------------------- row validation


def _has_control(text: str) -> bool:
    # Callers try str.isprintable() first (a fast C check); it is also False for spaces
    # other than " " and for format characters, which ids may hold, hence the categories.
    return any(unicodedata.category(c) == "Cc" for c in text)


#: Cached settings before the cache is cleared: distinct (model, mode, size) cells seen.
_SETTINGS_CACHE_MAX: Final = 4096


@dataclass(frozen=True, slots=True)
class _Setting:
    """What a row's ``model``, ``mode`` and ``size`` cells resolve to, once validated."""

    spec: ModelSpec
    mode: Mode
    size: str | None


class _RowChecker:
    """Validate and normalise one row at a time, with caches that live for one read."""

    def __init__(
        self,
        table: ModelTable,
        default_model: str,
        resolve_input: InputResolver,
        duplicates: DuplicateIds,
    ) -> None:
        self._table = table
        self._default = table.get(default_model)
        self._resolve = resolve_input
        self._candidates = duplicates.candidates
        #: Repeated id → the row it was first seen at (known up front when the reader reads
        #: a later part of the manifest only; otherwise set as rows are checked).
        self._first_seen: dict[str, int] = dict(duplicates.first_rows)
        # (model, mode, size) cells → setting, or (column, reason) refusing them. Manifests
        # repeat a handful of combinations, so one lookup replaces a dozen checks per row.
        self._settings: dict[tuple[object, object, object], _Setting | tuple[str, str]] = {}
        self._inputs: dict[str, str | InputDigest | Bad] = {}

    def _setting(
        self,
        model_text: str | Bad | None,
        mode_text: str | Bad | None,
        size_text: str | Bad | None,
    ) -> _Setting | tuple[str, str]:
        """The row's model spec, mode and ``W*H`` size, or ``(column, reason)`` refusing them."""
        if isinstance(model_text, Bad):
            return "model", f"model {model_text.reason}"
        name = model_text.strip() if model_text else ""
        spec: ModelSpec | None = self._default
        if name:
            spec = self._table.get(name) if name in self._table else None
        if spec is None:
            return "model", self._table.unknown_message(name)
        if isinstance(mode_text, Bad):
            return "mode", f"mode {mode_text.reason}"
        mode = _MODES.get((mode_text.strip().lower() if mode_text else "") or "generate")
        if mode is None:
            return "mode", f"mode must be 'generate' or 'edit', got {mode_text!r}"
        if mode not in spec.tasks and mode == "generate":
            return "mode", (
                f"{spec.name} only edits: set mode to 'edit' and give 1 to "
                f"{MAX_INPUT_IMAGES} input_images, or use a model that generates"
            )
        if mode not in spec.tasks:
            edit_models = [n for n in self._table.names() if "edit" in self._table.get(n).tasks]
            return "mode", f"{spec.name} cannot edit; edit models: {', '.join(edit_models)}"
        if isinstance(size_text, Bad):
            return "size", f"size {size_text.reason}"
        if not size_text or not size_text.strip():
            return _Setting(spec, mode, None)
        try:
            parsed = parse_size(size_text)
        except ValueError:  # digits that int() refuses, such as "²"
            parsed = None
        if parsed is None:
            return "size", f"size {size_text!r} is not of the form W*H (such as 1024*768)"
        size = f"{parsed[0]}*{parsed[1]}"
        problem = spec.size_problem(size)
        return ("size", problem) if problem else _Setting(spec, mode, size)

    @property
    def candidates(self) -> frozenset[str]:
        """Ids that occur more than once in the manifest."""
        return self._candidates

    def setting(
        self,
        model_text: str | Bad | None,
        mode_text: str | Bad | None,
        size_text: str | Bad | None,
    ) -> _Setting | tuple[str, str]:
        """What the three cells resolve to (cached), or ``(column, reason)`` refusing them."""
        cells = (model_text, mode_text, size_text)
        setting = self._settings.get(cells)
        if setting is None:
            if len(self._settings) >= _SETTINGS_CACHE_MAX:
                self._settings.clear()
            setting = self._settings[cells] = self._setting(model_text, mode_text, size_text)
        return setting

    def vector_setting(self, model_text: str, mode_text: str, size_text: str) -> Setting | None:
        """The setting of a generate row for the column-wise path; None leaves the rows
        to ``check`` (a reject, or an edit row that needs its inputs resolved)."""
        setting = self.setting(model_text or None, mode_text or None, size_text or None)
        if isinstance(setting, tuple) or setting.mode != "generate":
            return None
        spec = setting.spec
        return Setting(
            spec.name,
            setting.mode,
            setting.size,
            spec.prompt_max_chars,
            spec.negative_prompt_max_chars,
            spec.n_max,
        )

    def _input_sha256(self, uri: str) -> str | InputDigest | Bad:
        try:
            return self._inputs[uri]
        except KeyError:
            try:
                result: str | InputDigest | Bad = self._resolve(uri)
            except PermanentError as exc:
                result = Bad(exc.message)
            self._inputs[uri] = result
            return result

    def check(
        self,
        row: int,
        rid: str | Bad | None,
        prompt: str | Bad | None,
        mode_text: str | Bad | None,
        model_text: str | Bad | None,
        negative: str | Bad | None,
        size_text: str | Bad | None,
        n: int | Bad | None,
        seed: int | Bad | None,
        extend: bool | Bad | None,
        watermark: bool | Bad | None,
        images: tuple[str, ...] | Bad | None,
        tags: Tags | Bad | None,
        priority: int | Bad | None = None,
    ) -> RenderRequest | Reject:
        """The normalised request for one row, or the first reason to refuse it."""
        # id: present, printable, bounded, and first of its kind
        if not isinstance(rid, str):
            return Reject(row, None, "id", f"id {'is missing' if rid is None else rid.reason}")
        if not rid or rid.isspace():
            return Reject(row, rid, "id", "id is empty")
        if len(rid) > MAX_ID_CHARS:
            return Reject(
                row,
                rid[:MAX_ID_CHARS] + "…",
                "id",
                f"id has {len(rid)} characters; at most {MAX_ID_CHARS} are allowed",
            )
        if not rid.isprintable() and _has_control(rid):
            return Reject(row, rid, "id", "id contains control characters")
        if rid in self._candidates:
            first = self._first_seen.setdefault(rid, row)
            if first != row:
                return Reject(row, rid, "id", f"duplicate id (first seen at row {first})")

        if not isinstance(prompt, str):
            why = "is missing" if prompt is None else prompt.reason
            return Reject(row, rid, "prompt", f"prompt {why}")
        prompt = prompt.strip()
        if not prompt:
            return Reject(row, rid, "prompt", "prompt is empty")

        setting = self.setting(model_text, mode_text, size_text)
        if isinstance(setting, tuple):
            return Reject(row, rid, *setting)
        spec, mode = setting.spec, setting.mode

        if len(prompt) > spec.prompt_max_chars:
            return Reject(
                row,
                rid,
                "prompt",
                f"prompt has {len(prompt)} characters; "
                f"{spec.name} allows at most {spec.prompt_max_chars}",
            )
        if isinstance(negative, Bad):
            return Reject(row, rid, "negative_prompt", f"negative_prompt {negative.reason}")
        negative = negative.strip() or None if negative else None
        if negative is not None and len(negative) > spec.negative_prompt_max_chars:
            return Reject(
                row,
                rid,
                "negative_prompt",
                f"negative_prompt has {len(negative)} characters; {spec.name} "
                f"allows at most {spec.negative_prompt_max_chars}",
            )
        if n is None:
            n = 1
        elif isinstance(n, Bad):
            return Reject(row, rid, "n", f"n {n.reason}")
        elif n < 1:
            return Reject(row, rid, "n", f"n must be at least 1, got {n}")
        elif n > spec.n_max:
            return Reject(row, rid, "n", f"n={n} but {spec.name} makes at most {spec.n_max}")
        if isinstance(seed, Bad):
            return Reject(row, rid, "seed", f"seed {seed.reason}")
        if seed is not None and not 0 <= seed <= SEED_MAX:
            return Reject(row, rid, "seed", f"seed must be in [0, {SEED_MAX}], got {seed}")
        if isinstance(extend, Bad):
            return Reject(row, rid, "prompt_extend", f"prompt_extend {extend.reason}")
        if isinstance(watermark, Bad):
            return Reject(row, rid, "watermark", f"watermark {watermark.reason}")
        if isinstance(tags, Bad):
            return Reject(row, rid, "tags", f"tags {tags.reason}")
        if isinstance(priority, Bad):
            return Reject(row, rid, "priority", f"priority {priority.reason}")

        # edit inputs: counted, then resolved (last: hashing a file is the costly check)
        input_sha256: tuple[str, ...] = ()
        input_notes: tuple[str, ...] = ()
        if isinstance(images, Bad):
            return Reject(row, rid, "input_images", f"input_images {images.reason}")
        if mode == "generate" and images:
            return Reject(
                row,
                rid,
                "input_images",
                "input_images are given but mode is 'generate'; set mode to 'edit'",
            )
        if mode == "edit":
            count = len(images) if images else 0
            if not 1 <= count <= MAX_INPUT_IMAGES:
                return Reject(
                    row,
                    rid,
                    "input_images",
                    f"mode 'edit' needs 1 to {MAX_INPUT_IMAGES} input_images, got {count}",
                )
            digests = [self._input_sha256(uri) for uri in images or ()]
            for digest in digests:
                if isinstance(digest, Bad):
                    return Reject(row, rid, "input_images", digest.reason)
            resolved = [d for d in digests if not isinstance(d, Bad)]
            input_sha256 = tuple(d if isinstance(d, str) else d.sha256 for d in resolved)
            notes = tuple("" if isinstance(d, str) else d.note for d in resolved)
            input_notes = notes if any(notes) else ()

        watermark = bool(watermark)
        key, seed = key_and_seed(
            model=spec.name,
            mode=mode,
            prompt=prompt,
            negative_prompt=negative,
            size=setting.size,
            n=n,
            seed=seed,
            prompt_extend=extend,
            watermark=watermark,
            input_sha256=input_sha256,
        )
        return RenderRequest(
            row_id=rid,
            row_number=row,
            request_key=key,
            model=spec.name,
            mode=mode,
            prompt=prompt,
            negative_prompt=negative,
            size=setting.size,
            n=n,
            seed=seed,
            prompt_extend=extend,
            watermark=watermark,
            input_images=images or (),
            input_sha256=input_sha256,
            input_notes=input_notes,
            tags=tags or (),
            priority=priority,
        )


# --------------------------------------------------------------------------- files and schema


def _open(path: ManifestFile) -> pq.ParquetFile:
    try:
        return path.open()
    except (OSError, pa.ArrowException) as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from exc


def _check_schema(schema: pa.Schema, path: ManifestFile) -> tuple[list[str], list[str]]:
    """The known columns present in ``schema`` and warnings for the ignored ones."""
    names: list[str] = list(schema.names)
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        raise ManifestError(
            f"manifest {path} has no {' or '.join(map(repr, missing))} column; "
            f"its columns: {', '.join(names) or '(none)'}"
        )
    problems: list[str] = []
    present: list[str] = []
    warnings: list[str] = []
    for name in dict.fromkeys(names):
        if names.count(name) > 1:
            problems.append(f"column {name!r} appears {names.count(name)} times")
        elif name in COLUMN_TYPES:
            expected, accepts = COLUMN_TYPES[name]
            arrow_type = schema.field(name).type
            if not (pa.types.is_null(arrow_type) or accepts(value_type(arrow_type))):
                problems.append(f"column {name!r} has type {arrow_type}; expected {expected}")
            present.append(name)
        elif name not in _RESERVED and not _PANDAS_INDEX.fullmatch(name):
            warnings.append(f"ignored unknown column {name!r}")
    if problems:
        raise ManifestError(f"manifest {path} cannot be used: {'; '.join(problems)}")
    return present, warnings


def _id_bytes(array: pa.Array) -> pa.Array:
    """An id column as large_binary (for exact counting across files of different types)."""
    array = decoded(array)
    if pa.types.is_integer(array.type):
        array = pc.cast(array, pa.large_string())
    return pc.cast(array, pa.large_binary())


def _duplicate_candidates(files: list[ManifestFile]) -> frozenset[str]:
    """Ids that occur more than once in the manifest (first pass, ``id`` column only)."""
    chunks: list[pa.Array] = []
    for path in files:
        parquet = _open(path)
        try:
            column = parquet.read(columns=["id"]).column("id")
        except (OSError, pa.ArrowException) as exc:
            raise ManifestError(f"cannot read manifest {path}: {exc}") from exc
        finally:
            parquet.close()
        chunks.extend(_id_bytes(chunk) for chunk in column.chunks)
    if not chunks:
        return frozenset()
    counts = pc.value_counts(pa.chunked_array(chunks, pa.large_binary()))
    repeated = pc.filter(counts, pc.greater(counts.field("counts"), 1)).field("values")
    found = frozenset(v.decode("utf-8", "replace") for v in repeated.to_pylist() if v is not None)
    del chunks, counts, repeated
    # The pass peaks at ~100 bytes per row (ids, hash table); hand that back to the OS
    # rather than keep it in Arrow's allocator for the rest of the read.
    pa.default_memory_pool().release_unused()
    return found


def manifest_rows(path: str | os.PathLike[str], *, settings: Settings | None = None) -> list[int]:
    """The rows of each of the manifest's files, from their footers alone (ManifestError
    when a file cannot be opened)."""
    rows: list[int] = []
    for file in manifest_files(path, settings=settings):
        parquet = _open(file)
        try:
            rows.append(parquet.metadata.num_rows)
        finally:
            parquet.close()
    return rows


def batch_starts(file_rows: list[int], batch_size: int) -> list[int]:
    """The rows a reader's record batches start at, for files of ``file_rows`` rows read
    in batches of ``batch_size`` (each file's batches start at its first row)."""
    starts: list[int] = []
    offset = 0
    for rows in file_rows:
        starts.extend(range(offset, offset + rows, batch_size))
        offset += rows
    return starts


def _first_rows(files: list[ManifestFile], candidates: frozenset[str]) -> dict[str, int]:
    """The row each of ``candidates`` first occurs at (a second pass over the ``id`` column;
    none when there is no repeated id)."""
    first: dict[str, int] = {}
    if not candidates:
        return first
    wanted = pa.array(sorted(candidates), pa.string()).cast(pa.large_binary())
    offset = 0
    for path in files:
        parquet = _open(path)
        try:
            column = parquet.read(columns=["id"]).column("id")
        except (OSError, pa.ArrowException) as exc:
            raise ManifestError(f"cannot read manifest {path}: {exc}") from exc
        finally:
            parquet.close()
        for chunk in column.chunks:
            ids = _id_bytes(chunk)
            for at in pc.indices_nonzero(pc.is_in(ids, value_set=wanted)).to_pylist():
                rid = ids[at].as_py().decode("utf-8", "replace")
                first.setdefault(rid, offset + at)
            offset += len(chunk)
    return first


# --------------------------------------------------------------------------- the reader


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while one batch is checked (or a plan is made).

    Each row allocates a dozen container objects and none of them forms a cycle, yet every
    700 allocations start a collection that walks the young objects, and full collections
    walk everything the caller keeps: about a fifth of the reader's time, measured. Reference
    counting still frees everything; the collector resumes after the batch.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class ManifestReader:
    """Streams a manifest as ManifestBatch values; see ``read_manifest``.

    Opening checks the files and schema (raising ManifestError) and runs the duplicate-id
    pass; iterating reads ``batch_size`` rows at a time. Use as an iterator, or as a context
    manager to close the current file early.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table: ModelTable,
        default_model: str,
        batch_size: int = 65536,
        strict: bool = False,
        resolve_input: InputResolver | None = None,
        settings: Settings | None = None,
        duplicates: DuplicateIds | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if default_model not in table:
            raise ConfigError(table.unknown_message(default_model))
        remote = is_remote(path)
        self.path: Path | str = str(path) if remote else Path(path)
        self.strict = strict
        self._batch_size = batch_size
        self._files = manifest_files(path, settings=settings)
        self._columns: list[list[str]] = []
        #: Rows of each file, from its footer.
        self.file_rows: list[int] = []
        warnings: list[str] = []
        total = 0
        for file in self._files:
            parquet = _open(file)
            try:
                present, file_warnings = _check_schema(parquet.schema_arrow, file)
                self.file_rows.append(parquet.metadata.num_rows)
                total += parquet.metadata.num_rows
            finally:
                parquet.close()
            self._columns.append(present)
            warnings.extend(w for w in file_warnings if w not in warnings)
        self.summary = ManifestSummary(path=str(self.path), total_rows=total, warnings=warnings)
        self._resolver = resolve_input or (
            RemoteManifestInputs(str(path)) if remote else LocalInputResolver(Path(path).parent)
        )
        if duplicates is None:
            duplicates = DuplicateIds(_duplicate_candidates(self._files))
        self._checker = _RowChecker(table, default_model, self._resolver, duplicates)
        self._batches = self._read()

    @property
    def warnings(self) -> list[str]:
        """Manifest-level remarks, such as ignored unknown columns."""
        return self.summary.warnings

    @property
    def batch_size(self) -> int:
        return self._batch_size

    def duplicates(self) -> DuplicateIds:
        """The repeated ids and the row each is first seen at (reads the ids again when
        there are any): hand them to a reader of a later part of the manifest."""
        candidates = self._checker.candidates
        return DuplicateIds(candidates, _first_rows(self._files, candidates))

    def batch_starts(self) -> list[int]:
        """The rows a record batch starts at: where :meth:`blocks` may start or stop."""
        return batch_starts(self.file_rows, self._batch_size)

    def __iter__(self) -> ManifestReader:
        return self

    def __next__(self) -> ManifestBatch:
        return next(self._batches)

    def __enter__(self) -> ManifestReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading and release the open file."""
        self._batches.close()

    def collect(self) -> tuple[list[RenderRequest], list[Reject]]:
        """Read the rest of the manifest into two lists (for small manifests and tests)."""
        requests: list[RenderRequest] = []
        rejects: list[Reject] = []
        for batch in self:
            requests.extend(batch.requests)
            rejects.extend(batch.rejects)
        return requests, rejects

    def _read(self) -> Generator[ManifestBatch, None, None]:
        for record_batch, offset in self._record_batches():
            yield self._check_batch(record_batch, offset)

    def _check_batch(self, record_batch: pa.RecordBatch, offset: int) -> ManifestBatch:
        rows = record_batch.num_rows
        requests, rejects = self._check_rows(record_batch, range(offset, offset + rows))
        self._count(rows, len(requests), rejects, offset)
        return ManifestBatch(first_row=offset, num_rows=rows, requests=requests, rejects=rejects)

    def _check_rows(
        self, record_batch: pa.RecordBatch, row_numbers: Iterable[int]
    ) -> tuple[list[RenderRequest], list[Reject]]:
        """Check the rows of ``record_batch`` one by one (numbered ``row_numbers``)."""
        rows = record_batch.num_rows
        names = set(record_batch.schema.names)
        cells: list[Iterable[Any]] = [
            coerce(record_batch.column(name)) if name in names else repeat(None, rows)
            for name, coerce in COERCE.items()
        ]
        if "input_images" in names and isinstance(self._resolver, PrefetchingResolver):
            self._resolver.prefetch(
                uri for cell in cells[_IMAGES_CELL] if isinstance(cell, tuple) for uri in cell
            )
        requests: list[RenderRequest] = []
        rejects: list[Reject] = []
        check = self._checker.check
        with gc_paused():
            for row, values in zip(row_numbers, zip(*cells, strict=True), strict=True):
                outcome = check(row, *values)
                if isinstance(outcome, Reject):
                    rejects.append(outcome)
                else:
                    requests.append(outcome)
        return requests, rejects

    def _count(self, rows: int, accepted: int, rejects: list[Reject], offset: int) -> None:
        """Count one batch in the summary; in strict mode, refuse it if it has rejects."""
        summary = self.summary
        summary.rows_read += rows
        summary.accepted += accepted
        summary.rejected += len(rejects)
        summary.batches += 1
        if self.strict and rejects:
            shown = "; ".join(map(str, rejects[:STRICT_REASONS_SHOWN]))
            more = len(rejects) - STRICT_REASONS_SHOWN
            shown += f"; and {more} more" if more > 0 else ""
            raise ManifestError(
                f"manifest {self.path} refused (strict): {len(rejects)} bad row(s) in rows "
                f"{offset}–{offset + rows - 1}: {shown}"
            )

    def blocks(self, start: int = 0, stop: int | None = None) -> Iterator[CheckedBlock]:
        """The manifest as CheckedBlock values: the column-wise path (``manifest_vector``)
        for the common rows, the row checker for the rest. Use instead of iterating.

        ``start`` and ``stop`` (rows; each one of :meth:`batch_starts`, or ``stop`` None for
        the end) read a part of the manifest in the same batches as a whole read."""
        candidates = pa.array(sorted(self._checker.candidates), pa.string())
        for record_batch, offset in self._record_batches(start, stop):
            rows = record_batch.num_rows
            block = check_block(record_batch, offset, self._checker.vector_setting, candidates)
            requests: list[RenderRequest] = []
            rejects: list[Reject] = []
            if block.slow:
                slow = record_batch.take(pa.array(block.slow, pa.int64()))
                requests, rejects = self._check_rows(slow, (offset + i for i in block.slow))
            self._count(rows, block.fast.num_rows + len(requests), rejects, offset)
            yield CheckedBlock(offset, rows, block.fast, block.rows, requests, rejects)

    def _record_batches(
        self, start: int = 0, stop: int | None = None
    ) -> Generator[tuple[pa.RecordBatch, int], None, None]:
        """Record batches and the row each starts at, from row ``start`` to ``stop``."""
        if start or stop is not None:
            starts = self.batch_starts()
            for bound in (start, stop):
                if bound is not None and bound not in starts and bound != self.summary.total_rows:
                    raise ValueError(f"row {bound} is not where a batch starts")
        first_row = 0
        for file, present, rows in zip(self._files, self._columns, self.file_rows, strict=True):
            if first_row + rows <= start:  # wholly before the part asked for
                first_row += rows
                continue
            if stop is not None and first_row >= stop:
                return
            offset = max(first_row, start)
            parquet = _open(file)
            try:
                batches = _batches_from(parquet, offset - first_row, self._batch_size, present)
                while True:
                    if stop is not None and offset >= stop:
                        return
                    try:
                        record_batch = next(batches)
                    except StopIteration:
                        break
                    except (OSError, pa.ArrowException) as exc:
                        raise ManifestError(f"cannot read manifest {file}: {exc}") from exc
                    yield record_batch, offset
                    offset += record_batch.num_rows
            finally:
                parquet.close()
            first_row += rows


def _batches_from(
    parquet: pq.ParquetFile, row: int, size: int, columns: list[str]
) -> Iterator[pa.RecordBatch]:
    """``parquet``'s record batches of ``size`` rows from ``row`` (a multiple of ``size``):
    the batches a read from its first row gives from there on."""
    if row == 0:
        whole: Iterator[pa.RecordBatch] = parquet.iter_batches(batch_size=size, columns=columns)
        return whole
    group, group_row = 0, 0
    meta = parquet.metadata
    while group_row + meta.row_group(group).num_rows <= row:
        group_row += meta.row_group(group).num_rows
        group += 1
    groups = range(group, meta.num_row_groups)
    batches = parquet.iter_batches(batch_size=size, row_groups=groups, columns=columns)
    skip = row - group_row
    return batches if skip == 0 else _rebatched(batches, skip, size)


def _rebatched(batches: Iterable[pa.RecordBatch], skip: int, size: int) -> Iterator[pa.RecordBatch]:
    """``batches`` without their first ``skip`` rows, cut again into batches of ``size``."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        if skip:
            if batch.num_rows <= skip:
                skip -= batch.num_rows
                continue
            batch, skip = batch.slice(skip), 0
        pending.append(batch)
        held += batch.num_rows
        while held >= size:
            whole = pa.Table.from_batches(pending).combine_chunks()
            yield from whole.slice(0, size).to_batches()
            rest = whole.slice(size)
            pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield from pa.Table.from_batches(pending).combine_chunks().to_batches()


def read_manifest(
    path: str | os.PathLike[str],
    *,
    table: ModelTable,
    default_model: str,
    batch_size: int = 65536,
    strict: bool = False,
    resolve_input: InputResolver | None = None,
    settings: Settings | None = None,
    duplicates: DuplicateIds | None = None,
) -> ManifestReader:
    """Read, validate and normalise a manifest, ``batch_size`` rows at a time.

    Returns an iterator of ManifestBatch (``.requests`` and ``.rejects`` per record batch);
    ``reader.summary`` counts rows as they are read and ``reader.warnings`` lists ignored
    columns. Raises ManifestError at once when the manifest cannot be used at all (unreadable,
    no ``id`` or ``prompt`` column, a column of an unusable type), and ConfigError when
    ``default_model`` is not in ``table``. With ``strict=True``, the first batch holding a
    bad row raises ManifestError naming its first rejects; batches yielded before it are
    valid but the caller should discard them (plan reads the whole manifest before sending).

    ``resolve_input`` maps an input-image URI to the sha256 hex of its bytes; the default is
    ``LocalInputResolver(path.parent)``: the folder holding the manifest file (or holding the
    folder of part files). For an ``s3://`` manifest it is ``RemoteManifestInputs``, which
    rejects rows with input images for now (``qwbatch.manifest.files``).

    ``path`` is a local file or folder, or ``s3://bucket/key.parquet`` or ``s3://bucket/folder/``
    (read in ranges; see ``qwbatch.manifest.files``). ``settings`` configure the S3 client
    (endpoint, region, addressing style); the default is ``Settings()`` from the environment.

    >>> reader = read_manifest("m.parquet", table=ModelTable.load(),  # doctest: +SKIP
    ...                        default_model="qwen-image-2.0")
    >>> for batch in reader:  # doctest: +SKIP
    ...     plan.add(batch.requests); rejects.extend(batch.rejects)
    """
    return ManifestReader(
        path,
        table=table,
        default_model=default_model,
        batch_size=batch_size,
        strict=strict,
        resolve_input=resolve_input,
        settings=settings,
        duplicates=duplicates,
    )
