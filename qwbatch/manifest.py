"""Manifests: the Parquet schema, a streaming reader that validates every row, and rejects.

A manifest is a Parquet file (or a folder of Parquet part files, as Spark and DuckDB write
them) with one render request per row:

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
``priority``       –                             recognised (reserved); not read yet
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

**Edit inputs** are resolved to the sha256 of their bytes (``resolve_input(uri) -> hex``),
once per distinct URI within a read. The default resolver reads local files relative to the
manifest's folder; see ``LocalInputResolver``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import repeat
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qwbatch.errors import ConfigError, ManifestError, PermanentError, StorageError
from qwbatch.keys import SEED_MAX, key_and_seed
from qwbatch.models import Mode, RenderRequest
from qwbatch.registry import ModelSpec, ModelTable, parse_size

#: Longest accepted row id, in characters.
MAX_ID_CHARS: Final = 256
#: Input images per edit request (dashscope-api.md §3.5; the same for every edit model).
MAX_INPUT_IMAGES: Final = 3
#: Rejects quoted in a strict-mode ManifestError.
STRICT_REASONS_SHOWN: Final = 5
#: Message for input URIs whose scheme the default resolver does not read.
UNSUPPORTED_INPUT: Final = (
    "input source not supported yet: s3:// and https:// come with the edit-inputs feature"
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

#: ``uri -> sha256 hex`` of the input image's bytes. Raise a PermanentError (any subclass)
#: to reject the row with its message; any other exception ends the read.
InputResolver = Callable[[str], str]

_MODES: Final[dict[str, Mode]] = {"generate": "generate", "edit": "edit"}
_TRUE: Final = frozenset({"true", "1"})
_FALSE: Final = frozenset({"false", "0"})
_INT_TEXT: Final = re.compile(r"[+-]?[0-9]+")
_SCHEME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://|^data:")
_PANDAS_INDEX: Final = re.compile(r"__index_level_\d+__")
_RESERVED: Final = frozenset({"priority"})  # known, not read yet


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
            raise ManifestError(
                f"input path {uri!r} {where} the manifest's folder {self.base_dir}"
            )
        try:
            with path.open("rb") as handle:
                return hashlib.file_digest(handle, "sha256").hexdigest()
        except FileNotFoundError:
            raise StorageError(f"input image not found: {uri!r} (looked for {path})") from None
        except OSError as exc:
            raise StorageError(f"cannot read input image {uri!r}: {exc.strerror}") from exc


# --------------------------------------------------------------------------- column coercion
#
# Each helper turns one Arrow column of a batch into a Python list, one value per row: the
# normalised value, None when the cell is null, or a _Bad carrying the reason the cell is
# unusable. Common types take the fast path (one ``to_pylist``); per-value Python work only
# happens for the tolerated variants (floats for n, strings for booleans, JSON text …).


class _Bad:
    """A cell that cannot be used; ``reason`` says why."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


_T = TypeVar("_T")
Cells = list[_T | _Bad | None]


def _value_type(arrow_type: pa.DataType) -> pa.DataType:
    return arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type


def _is_text(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_string_view(t)
        or _is_binary(t)
    )


def _is_binary(t: pa.DataType) -> bool:
    return bool(pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t))


def _is_list(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_fixed_size_list(t)
        or pa.types.is_list_view(t)
        or pa.types.is_large_list_view(t)
    )


def _is_scalar(t: pa.DataType) -> bool:
    t = _value_type(t)
    return bool(
        _is_text(t)
        or pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_decimal(t)
        or pa.types.is_boolean(t)
        or pa.types.is_null(t)
    )


def _accepts_id(t: pa.DataType) -> bool:
    return _is_text(t) or bool(pa.types.is_integer(t))


def _accepts_int(t: pa.DataType) -> bool:
    return _is_text(t) or bool(
        pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
    )


def _accepts_bool(t: pa.DataType) -> bool:
    return _is_text(t) or bool(pa.types.is_boolean(t) or pa.types.is_integer(t))


def _accepts_images(t: pa.DataType) -> bool:
    return _is_text(t) or (_is_list(t) and (_is_text(_value_type(t.value_type))))


def _accepts_tags(t: pa.DataType) -> bool:
    if pa.types.is_map(t):
        return _is_text(_value_type(t.key_type)) and _is_scalar(t.item_type)
    if pa.types.is_struct(t):
        return all(_is_scalar(t.field(i).type) for i in range(t.num_fields))
    return _is_text(t) or (_is_list(t) and _is_text(_value_type(t.value_type)))


#: Column → (what it must be, type check on the dictionary-decoded type).
_COLUMNS: Final[dict[str, tuple[str, Callable[[pa.DataType], bool]]]] = {
    "id": ("a string or integer column", _accepts_id),
    "prompt": ("a string column", _is_text),
    "mode": ("a string column", _is_text),
    "model": ("a string column", _is_text),
    "negative_prompt": ("a string column", _is_text),
    "size": ("a string column ('W*H')", _is_text),
    "n": ("an integer column", _accepts_int),
    "seed": ("an integer column", _accepts_int),
    "prompt_extend": ("a boolean column", _accepts_bool),
    "watermark": ("a boolean column", _accepts_bool),
    "input_images": ("a list of strings or a string column", _accepts_images),
    "tags": ("a map, struct, list of strings or string column", _accepts_tags),
}
REQUIRED_COLUMNS: Final = ("id", "prompt")


def _decoded(array: pa.Array) -> pa.Array:
    return array.dictionary_decode() if pa.types.is_dictionary(array.type) else array


def _utf8(value: bytes) -> str | _Bad:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return _Bad("is not valid UTF-8 text")


def _texts(array: pa.Array) -> Cells[str]:
    """Python strings (not yet stripped); binary cells are decoded as UTF-8."""
    array = _decoded(array)
    values: list[Any] = array.to_pylist()
    if _is_binary(array.type):
        return [None if v is None else _utf8(v) for v in values]
    return values


def _ids(array: pa.Array) -> Cells[str]:
    if pa.types.is_integer(array.type):
        return [None if v is None else str(v) for v in array.to_pylist()]
    return _texts(array)


def _whole(value: float | Decimal) -> int | _Bad:
    try:
        whole = int(value)
    except (ValueError, OverflowError):
        return _Bad(f"must be a whole number, got {value}")
    return whole if whole == value else _Bad(f"must be a whole number, got {value}")


def _int_text(text: str) -> int | _Bad | None:
    text = text.strip()
    if not text:
        return None
    if not _INT_TEXT.fullmatch(text):
        return _Bad(f"must be a whole number, got {text!r}")
    return int(text)


def _ints(array: pa.Array) -> Cells[int]:
    array = _decoded(array)
    values: list[Any] = array.to_pylist()
    kind = array.type
    if pa.types.is_integer(kind) or pa.types.is_null(kind):
        return values
    if _is_text(kind):
        return [None if v is None else _int_text(_text_of(v)) for v in values]
    return [None if v is None else _whole(v) for v in values]


def _text_of(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _bool_text(text: str) -> bool | _Bad | None:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    return None if not word else _Bad(f"must be true or false, got {text!r}")


def _bools(array: pa.Array) -> Cells[bool]:
    array = _decoded(array)
    values: list[Any] = array.to_pylist()
    kind = array.type
    if pa.types.is_boolean(kind) or pa.types.is_null(kind):
        return values
    if pa.types.is_integer(kind):
        return [
            None if v is None else (bool(v) if v in (0, 1) else _Bad(f"must be 0 or 1, got {v}"))
            for v in values
        ]
    return [None if v is None else _bool_text(_text_of(v)) for v in values]


def _image_tuple(items: list[Any]) -> tuple[str, ...] | _Bad:
    uris: list[str] = []
    for position, item in enumerate(items):
        text = item.decode("utf-8", "replace") if isinstance(item, bytes) else item
        if not isinstance(text, str) or not text.strip():
            return _Bad(f"input_images[{position}] is empty")
        uris.append(text.strip())
    return tuple(uris)


def _image_text(text: str) -> tuple[str, ...] | _Bad | None:
    text = text.strip()
    if not text:
        return None
    if not text.startswith("["):
        return (text,)
    try:
        items = json.loads(text)
    except ValueError:
        return _Bad("is not a valid JSON array of strings")
    if not isinstance(items, list):
        return _Bad("is not a valid JSON array of strings")
    return _image_tuple(items) if items else None


def _images(array: pa.Array) -> Cells[tuple[str, ...]]:
    array = _decoded(array)
    values: list[Any] = array.to_pylist()
    if _is_text(array.type):
        return [None if v is None else _image_text(_text_of(v)) for v in values]
    return [None if not v else _image_tuple(v) for v in values]


Tags = tuple[tuple[str, str], ...]


def _tag_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _tags_from_pairs(pairs: Iterable[tuple[Any, Any]]) -> Tags | _Bad:
    tags: dict[str, str] = {}
    for key, value in pairs:
        if value is None:
            continue
        name = _tag_text(key).strip() if key is not None else ""
        if not name:
            return _Bad("has a tag with an empty key")
        tags[name] = _tag_text(value).strip()
    return tuple(sorted(tags.items()))


def _label_pair(item: Any) -> tuple[str, str] | None:
    if item is None:
        return None
    text = _tag_text(item)
    key, _, value = text.partition("=")
    return (key, value) if text.strip() else None


def _tags_from_labels(items: Iterable[Any]) -> Tags | _Bad:
    return _tags_from_pairs(pair for pair in map(_label_pair, items) if pair is not None)


def _tags_from_text(text: str) -> Tags | _Bad | None:
    text = text.strip()
    if not text:
        return None
    if text[0] in "{[":
        try:
            parsed = json.loads(text)
        except ValueError:
            return _Bad("is not valid JSON")
        if isinstance(parsed, dict):
            if any(isinstance(v, dict | list) for v in parsed.values()):
                return _Bad("JSON tag values must be strings, numbers or booleans")
            return _tags_from_pairs(parsed.items())
        if isinstance(parsed, list):
            return _tags_from_labels(parsed)
        return _Bad("is neither a JSON object nor a JSON array")
    return _tags_from_labels(text.split(","))


def _tags(array: pa.Array) -> Cells[Tags]:
    array = _decoded(array)
    kind = array.type
    values: list[Any] = array.to_pylist()
    if pa.types.is_map(kind):
        return [None if v is None else _tags_from_pairs(v) for v in values]
    if pa.types.is_struct(kind):
        return [None if v is None else _tags_from_pairs(v.items()) for v in values]
    if _is_list(kind):
        return [None if v is None else _tags_from_labels(v) for v in values]
    return [None if v is None else _tags_from_text(_text_of(v)) for v in values]


# --------------------------------------------------------------------------- row validation


def _control_free(text: str) -> bool:
    # isprintable() is a fast C check; it is also False for spaces other than " " and for
    # format characters, which we allow, so confirm with the character categories.
    return text.isprintable() or not any(unicodedata.category(c) == "Cc" for c in text)


class _RowChecker:
    """Validate and normalise one row at a time, with caches that live for one read."""

    def __init__(
        self,
        table: ModelTable,
        default_model: str,
        resolve_input: InputResolver,
        duplicate_candidates: frozenset[str],
    ) -> None:
        self._table = table
        self._default = table.get(default_model)
        self._resolve = resolve_input
        self._candidates = duplicate_candidates
        self._first_seen: dict[str, int] = {}
        self._specs: dict[str, ModelSpec | None] = {}
        self._sizes: dict[str, str | None] = {}
        self._size_problems: dict[tuple[str, str], str | None] = {}
        self._inputs: dict[str, str | _Bad] = {}

    def _spec(self, name: str) -> ModelSpec | None:
        try:
            return self._specs[name]
        except KeyError:
            spec = self._table.get(name) if name in self._table else None
            self._specs[name] = spec
            return spec

    def _size(self, raw: str) -> str | None:
        """``"1024 x 768"`` → ``"1024*768"``; None when not of the form W*H."""
        try:
            return self._sizes[raw]
        except KeyError:
            try:
                parsed = parse_size(raw)
            except ValueError:  # digits int() refuses, such as "²"
                parsed = None
            size = f"{parsed[0]}*{parsed[1]}" if parsed else None
            self._sizes[raw] = size
            return size

    def _size_problem(self, spec: ModelSpec, size: str) -> str | None:
        key = (spec.name, size)
        try:
            return self._size_problems[key]
        except KeyError:
            problem = self._size_problems[key] = spec.size_problem(size)
            return problem

    def _input_sha256(self, uri: str) -> str | _Bad:
        try:
            return self._inputs[uri]
        except KeyError:
            try:
                result: str | _Bad = self._resolve(uri)
            except PermanentError as exc:
                result = _Bad(exc.message)
            self._inputs[uri] = result
            return result

    def _edit_models(self) -> str:
        names = self._table.names()
        return ", ".join(n for n in names if "edit" in self._table.get(n).tasks)

    def check(
        self,
        row: int,
        rid: str | _Bad | None,
        prompt: str | _Bad | None,
        mode_text: str | _Bad | None,
        model_name: str | _Bad | None,
        negative: str | _Bad | None,
        size_text: str | _Bad | None,
        n: int | _Bad | None,
        seed: int | _Bad | None,
        extend: bool | _Bad | None,
        watermark: bool | _Bad | None,
        images: tuple[str, ...] | _Bad | None,
        tags: Tags | _Bad | None,
    ) -> RenderRequest | Reject:
        """The normalised request for one row, or the first reason to refuse it."""
        # id: present, printable, bounded, and first of its kind
        if not isinstance(rid, str):
            why = "is missing" if rid is None else rid.reason
            return Reject(row, None, "id", f"id {why}")
        if not rid.strip():
            return Reject(row, rid, "id", "id is empty")
        if len(rid) > MAX_ID_CHARS:
            return Reject(row, rid[:MAX_ID_CHARS] + "…", "id",
                          f"id has {len(rid)} characters; at most {MAX_ID_CHARS} are allowed")
        if not _control_free(rid):
            return Reject(row, rid, "id", "id contains control characters")
        if rid in self._candidates:
            first = self._first_seen.setdefault(rid, row)
            if first != row:
                return Reject(row, rid, "id", f"duplicate id (first seen at row {first})")

        if not isinstance(prompt, str):
            return Reject(row, rid, "prompt", "prompt is missing" if prompt is None
                          else f"prompt {prompt.reason}")
        prompt = prompt.strip()
        if not prompt:
            return Reject(row, rid, "prompt", "prompt is empty")

        # model, then the mode it must serve
        if isinstance(model_name, _Bad):
            return Reject(row, rid, "model", f"model {model_name.reason}")
        model_name = model_name.strip() if model_name else ""
        spec = self._spec(model_name) if model_name else self._default
        if spec is None:
            return Reject(row, rid, "model", self._table.unknown_message(model_name))
        if isinstance(mode_text, _Bad):
            return Reject(row, rid, "mode", f"mode {mode_text.reason}")
        mode_word = mode_text.strip().lower() if mode_text else ""
        mode = _MODES.get(mode_word or "generate")
        if mode is None:
            return Reject(row, rid, "mode", f"mode must be 'generate' or 'edit', got {mode_text!r}")
        if mode not in spec.tasks:
            if mode == "generate":
                return Reject(row, rid, "mode", f"{spec.name} only edits: set mode to 'edit' "
                              "and give 1 to 3 input_images, or use a model that generates")
            return Reject(row, rid, "mode", f"{spec.name} cannot edit; edit models: "
                          f"{self._edit_models()}")
        if len(prompt) > spec.prompt_max_chars:
            return Reject(row, rid, "prompt", f"prompt has {len(prompt)} characters; "
                          f"{spec.name} allows at most {spec.prompt_max_chars}")

        if isinstance(negative, _Bad):
            return Reject(row, rid, "negative_prompt", f"negative_prompt {negative.reason}")
        negative = negative.strip() or None if negative else None
        if negative is not None and len(negative) > spec.negative_prompt_max_chars:
            return Reject(row, rid, "negative_prompt",
                          f"negative_prompt has {len(negative)} characters; {spec.name} "
                          f"allows at most {spec.negative_prompt_max_chars}")

        size: str | None = None
        if isinstance(size_text, _Bad):
            return Reject(row, rid, "size", f"size {size_text.reason}")
        if size_text and size_text.strip():
            size = self._size(size_text)
            if size is None:
                return Reject(row, rid, "size",
                              f"size {size_text!r} is not of the form W*H (such as 1024*768)")
            problem = self._size_problem(spec, size)
            if problem is not None:
                return Reject(row, rid, "size", problem)

        if n is None:
            n = 1
        elif isinstance(n, _Bad):
            return Reject(row, rid, "n", f"n {n.reason}")
        elif n < 1:
            return Reject(row, rid, "n", f"n must be at least 1, got {n}")
        elif n > spec.n_max:
            return Reject(row, rid, "n", f"n={n} but {spec.name} makes at most {spec.n_max}")

        if isinstance(seed, _Bad):
            return Reject(row, rid, "seed", f"seed {seed.reason}")
        if seed is not None and not 0 <= seed <= SEED_MAX:
            return Reject(row, rid, "seed", f"seed must be in [0, {SEED_MAX}], got {seed}")
        if isinstance(extend, _Bad):
            return Reject(row, rid, "prompt_extend", f"prompt_extend {extend.reason}")
        if isinstance(watermark, _Bad):
            return Reject(row, rid, "watermark", f"watermark {watermark.reason}")
        if isinstance(tags, _Bad):
            return Reject(row, rid, "tags", f"tags {tags.reason}")

        # edit inputs: counted, then resolved (last: hashing a file is the costly check)
        if isinstance(images, _Bad):
            return Reject(row, rid, "input_images", f"input_images {images.reason}")
        images = images or ()
        if mode == "generate" and images:
            return Reject(row, rid, "input_images",
                          "input_images are given but mode is 'generate'; set mode to 'edit'")
        if mode == "edit" and not 1 <= len(images) <= MAX_INPUT_IMAGES:
            return Reject(row, rid, "input_images", f"mode 'edit' needs 1 to "
                          f"{MAX_INPUT_IMAGES} input_images, got {len(images)}")
        digests: list[str] = []
        for uri in images:
            digest = self._input_sha256(uri)
            if isinstance(digest, _Bad):
                return Reject(row, rid, "input_images", digest.reason)
            digests.append(digest)
        input_sha256 = tuple(digests)

        watermark = bool(watermark)
        key, seed = key_and_seed(
            model=spec.name, mode=mode, prompt=prompt, negative_prompt=negative, size=size,
            n=n, seed=seed, prompt_extend=extend, watermark=watermark, input_sha256=input_sha256,
        )
        return RenderRequest(
            row_id=rid, row_number=row, request_key=key, model=spec.name, mode=mode,
            prompt=prompt, negative_prompt=negative, size=size, n=n, seed=seed,
            prompt_extend=extend, watermark=watermark, input_images=images,
            input_sha256=input_sha256, tags=tags or (),
        )


#: Column → coercion helper, in the order ``_RowChecker.check`` takes them after ``row``.
_COERCE: Final[dict[str, Callable[[pa.Array], list[Any]]]] = {
    "id": _ids,
    "prompt": _texts,
    "mode": _texts,
    "model": _texts,
    "negative_prompt": _texts,
    "size": _texts,
    "n": _ints,
    "seed": _ints,
    "prompt_extend": _bools,
    "watermark": _bools,
    "input_images": _images,
    "tags": _tags,
}


# --------------------------------------------------------------------------- files and schema


def _manifest_files(path: Path) -> list[Path]:
    """The Parquet file, or a folder's part files in name order (skipping ``_``/``.`` files)."""
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir()
            if p.is_file() and not p.name.startswith(("_", ".")) and p.suffix != ".crc"
        )
        if not files:
            raise ManifestError(f"cannot read manifest {path}: the folder has no Parquet files")
        return files
    return [path]


def _open(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from exc


def _check_schema(schema: pa.Schema, path: Path) -> tuple[list[str], list[str]]:
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
        elif name in _COLUMNS:
            expected, accepts = _COLUMNS[name]
            arrow_type = schema.field(name).type
            if not (pa.types.is_null(arrow_type) or accepts(_value_type(arrow_type))):
                problems.append(f"column {name!r} has type {arrow_type}; expected {expected}")
            present.append(name)
        elif name not in _RESERVED and not _PANDAS_INDEX.fullmatch(name):
            warnings.append(f"ignored unknown column {name!r}")
    if problems:
        raise ManifestError(f"manifest {path} cannot be used: {'; '.join(problems)}")
    return present, warnings


def _id_bytes(array: pa.Array) -> pa.Array:
    """An id column as large_binary (for exact counting across files of different types)."""
    array = _decoded(array)
    if pa.types.is_integer(array.type):
        array = pc.cast(array, pa.large_string())
    return pc.cast(array, pa.large_binary())


def _duplicate_candidates(files: list[Path]) -> frozenset[str]:
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
    return frozenset(v.decode("utf-8", "replace") for v in repeated.to_pylist() if v is not None)


# --------------------------------------------------------------------------- the reader


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
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if default_model not in table:
            raise ConfigError(table.unknown_message(default_model))
        self.path = Path(path)
        self.strict = strict
        self._batch_size = batch_size
        self._files = _manifest_files(self.path)
        self._columns: list[list[str]] = []
        warnings: list[str] = []
        total = 0
        for file in self._files:
            parquet = _open(file)
            try:
                present, file_warnings = _check_schema(parquet.schema_arrow, file)
                total += parquet.metadata.num_rows
            finally:
                parquet.close()
            self._columns.append(present)
            warnings.extend(w for w in file_warnings if w not in warnings)
        self.summary = ManifestSummary(path=str(self.path), total_rows=total, warnings=warnings)
        resolver = resolve_input or LocalInputResolver(self.path.parent)
        self._checker = _RowChecker(
            table, default_model, resolver, _duplicate_candidates(self._files)
        )
        self._open_file: pq.ParquetFile | None = None
        self._batches = self._read()

    @property
    def warnings(self) -> list[str]:
        """Manifest-level remarks, such as ignored unknown columns."""
        return self.summary.warnings

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
        offset = 0
        for file, present in zip(self._files, self._columns, strict=True):
            parquet = _open(file)
            try:
                batches = parquet.iter_batches(batch_size=self._batch_size, columns=present)
                while True:
                    try:
                        record_batch = next(batches)
                    except StopIteration:
                        break
                    except (OSError, pa.ArrowException) as exc:
                        raise ManifestError(f"cannot read manifest {file}: {exc}") from exc
                    batch = self._check_batch(record_batch, offset)
                    offset += batch.num_rows
                    yield batch
            finally:
                parquet.close()

    def _check_batch(self, record_batch: pa.RecordBatch, offset: int) -> ManifestBatch:
        rows = record_batch.num_rows
        names = set(record_batch.schema.names)
        cells: list[Iterable[Any]] = [
            coerce(record_batch.column(name)) if name in names else repeat(None, rows)
            for name, coerce in _COERCE.items()
        ]
        requests: list[RenderRequest] = []
        rejects: list[Reject] = []
        check = self._checker.check
        for row, values in enumerate(zip(*cells, strict=True), start=offset):
            outcome = check(row, *values)
            if isinstance(outcome, Reject):
                rejects.append(outcome)
            else:
                requests.append(outcome)
        summary = self.summary
        summary.rows_read += rows
        summary.accepted += len(requests)
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
        return ManifestBatch(first_row=offset, num_rows=rows, requests=requests, rejects=rejects)


def read_manifest(
    path: str | os.PathLike[str],
    *,
    table: ModelTable,
    default_model: str,
    batch_size: int = 65536,
    strict: bool = False,
    resolve_input: InputResolver | None = None,
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
    ``LocalInputResolver(<the manifest's folder>)``.

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
    )
