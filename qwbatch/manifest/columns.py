"""Column coercion for manifests: one Arrow column of a record batch → one Python cell per row.

Each ``coerce`` function takes an Arrow array and returns a list with, per row, the value in
its normal Python form, None for a null cell, or a ``Bad`` carrying the reason the cell
cannot be used (so the row is rejected with that reason and the others go on). The common
Arrow types take a fast path (one ``to_pylist``, or Arrow compute for map tags); per-value
Python work happens only for the tolerated variants: whole floats and integer text for
integers, 0/1 and ``"true"``/``"false"`` text for booleans, JSON text for lists and tags,
binary columns holding UTF-8. ``COLUMN_TYPES`` says which Arrow types each column accepts.

Tag rules are documented in ``qwbatch.manifest.reader``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from decimal import Decimal
from itertools import repeat
from typing import Any, Final, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

_TRUE: Final = frozenset({"true", "1"})
_FALSE: Final = frozenset({"false", "0"})
_INT_TEXT: Final = re.compile(r"[+-]?[0-9]+")


class Bad:
    """A cell that cannot be used; ``reason`` says why."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


_T = TypeVar("_T")
#: One column of a batch as Python cells: value, None (null) or Bad (unusable), per row.
Cells = list[_T | Bad | None]
#: Tags as the rest of qwbatch sees them: sorted ``(key, value)`` pairs.
Tags = tuple[tuple[str, str], ...]


def value_type(arrow_type: pa.DataType) -> pa.DataType:
    """The type of the values: a dictionary's value type, else the type itself."""
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
    t = value_type(t)
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
    return _is_text(t) or (_is_list(t) and (_is_text(value_type(t.value_type))))


def _accepts_tags(t: pa.DataType) -> bool:
    if pa.types.is_map(t):
        return _is_text(value_type(t.key_type)) and _is_scalar(t.item_type)
    if pa.types.is_struct(t):
        return all(_is_scalar(t.field(i).type) for i in range(t.num_fields))
    return _is_text(t) or (_is_list(t) and _is_text(value_type(t.value_type)))


def _accepts_params(t: pa.DataType) -> bool:
    if pa.types.is_map(t):
        return _is_text(value_type(t.key_type)) and _is_scalar(t.item_type)
    if pa.types.is_struct(t):
        return all(_is_scalar(t.field(i).type) for i in range(t.num_fields))
    return _is_text(t)


#: Column → (what it must be, type check on the dictionary-decoded type).
COLUMN_TYPES: Final[dict[str, tuple[str, Callable[[pa.DataType], bool]]]] = {
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
    "priority": ("an integer column", _accepts_int),
    "params": ("a map, struct or JSON-object string column", _accepts_params),
    "models": ("a list of strings or a string column", _accepts_images),
    "expected_text": ("a list of strings or a string column", _accepts_images),
}
REQUIRED_COLUMNS: Final = ("id", "prompt")


def decoded(array: pa.Array) -> pa.Array:
    """The array with dictionary encoding undone (other arrays as they are)."""
    return array.dictionary_decode() if pa.types.is_dictionary(array.type) else array


def _utf8(value: bytes) -> str | Bad:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return Bad("is not valid UTF-8 text")


def _texts(array: pa.Array) -> Cells[str]:
    """Python strings (not yet stripped); binary cells are decoded as UTF-8."""
    array = decoded(array)
    values: list[Any] = array.to_pylist()
    if _is_binary(array.type):
        return [None if v is None else _utf8(v) for v in values]
    return values


def _ids(array: pa.Array) -> Cells[str]:
    if pa.types.is_integer(array.type):
        return [None if v is None else str(v) for v in array.to_pylist()]
    return _texts(array)


def _whole(value: float | Decimal) -> int | Bad:
    try:
        whole = int(value)
    except (ValueError, OverflowError):
        return Bad(f"must be a whole number, got {value}")
    return whole if whole == value else Bad(f"must be a whole number, got {value}")


def _int_text(text: str) -> int | Bad | None:
    text = text.strip()
    if not text:
        return None
    if not _INT_TEXT.fullmatch(text):
        return Bad(f"must be a whole number, got {text!r}")
    return int(text)


def _ints(array: pa.Array) -> Cells[int]:
    array = decoded(array)
    values: list[Any] = array.to_pylist()
    kind = array.type
    if pa.types.is_integer(kind) or pa.types.is_null(kind):
        return values
    if _is_text(kind):
        return [None if v is None else _int_text(_text_of(v)) for v in values]
    return [None if v is None else _whole(v) for v in values]


def _text_of(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _bool_text(text: str) -> bool | Bad | None:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    return None if not word else Bad(f"must be true or false, got {text!r}")


def _bools(array: pa.Array) -> Cells[bool]:
    array = decoded(array)
    values: list[Any] = array.to_pylist()
    kind = array.type
    if pa.types.is_boolean(kind) or pa.types.is_null(kind):
        return values
    if pa.types.is_integer(kind):
        return [
            None if v is None else (bool(v) if v in (0, 1) else Bad(f"must be 0 or 1, got {v}"))
            for v in values
        ]
    return [None if v is None else _bool_text(_text_of(v)) for v in values]


def _image_tuple(items: list[Any]) -> tuple[str, ...] | Bad:
    uris: list[str] = []
    for position, item in enumerate(items):
        text = item.decode("utf-8", "replace") if isinstance(item, bytes) else item
        if not isinstance(text, str) or not text.strip():
            return Bad(f"input_images[{position}] is empty")
        uris.append(text.strip())
    return tuple(uris)


def _image_text(text: str) -> tuple[str, ...] | Bad | None:
    text = text.strip()
    if not text:
        return None
    if not text.startswith("["):
        return (text,)
    try:
        items = json.loads(text)
    except ValueError:
        return Bad("is not a valid JSON array of strings")
    if not isinstance(items, list):
        return Bad("is not a valid JSON array of strings")
    return _image_tuple(items) if items else None


def _images(array: pa.Array) -> Cells[tuple[str, ...]]:
    array = decoded(array)
    values: list[Any] = array.to_pylist()
    if _is_text(array.type):
        return [None if v is None else _image_text(_text_of(v)) for v in values]
    return [None if not v else _image_tuple(v) for v in values]


#: Separates several expected strings in one text cell (CSV has no lists).
EXPECTED_TEXT_SEPARATOR: Final = "|"


def _expected_tuple(items: list[Any]) -> tuple[str, ...] | None:
    texts = (_text_of(item).strip() for item in items if isinstance(item, str | bytes))
    kept = tuple(text for text in texts if text)
    return kept or None


def _expected_text(text: str) -> tuple[str, ...] | Bad | None:
    text = text.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except ValueError:
            return Bad("is not a valid JSON array of strings")
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            return Bad("is not a valid JSON array of strings")
        return _expected_tuple(items)
    return _expected_tuple(text.split(EXPECTED_TEXT_SEPARATOR))


def _expected_texts(array: pa.Array) -> Cells[tuple[str, ...]]:
    """Each cell's expected strings: a list, a JSON array, or text split at ``|``; empty
    strings dropped, so an empty cell expects nothing."""
    array = decoded(array)
    values: list[Any] = array.to_pylist()
    if _is_text(array.type):
        return [None if v is None else _expected_text(_text_of(v)) for v in values]
    return [None if not v else _expected_tuple(v) for v in values]


def _tag_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _tags_from_pairs(pairs: Iterable[tuple[Any, Any]]) -> Tags | Bad:
    tags: dict[str, str] = {}
    for key, value in pairs:
        if value is None:
            continue
        name = _tag_text(key).strip() if key is not None else ""
        if not name:
            return Bad("has a tag with an empty key")
        tags[name] = _tag_text(value).strip()
    return tuple(sorted(tags.items()))


def _label_pair(item: Any) -> tuple[str, str] | None:
    if item is None:
        return None
    text = _tag_text(item)
    key, _, value = text.partition("=")
    return (key, value) if text.strip() else None


def _tags_from_labels(items: Iterable[Any]) -> Tags | Bad:
    return _tags_from_pairs(pair for pair in map(_label_pair, items) if pair is not None)


def _tags_from_text(text: str) -> Tags | Bad | None:
    text = text.strip()
    if not text:
        return None
    if text[0] in "{[":
        try:
            parsed = json.loads(text)
        except ValueError:
            return Bad("is not valid JSON")
        if isinstance(parsed, dict):
            if any(isinstance(v, dict | list) for v in parsed.values()):
                return Bad("JSON tag values must be strings, numbers or booleans")
            return _tags_from_pairs(parsed.items())
        if isinstance(parsed, list):
            return _tags_from_labels(parsed)
        return Bad("is neither a JSON object nor a JSON array")
    return _tags_from_labels(text.split(","))


def _sorted_pairs(pairs: list[tuple[str, str]]) -> Tags:
    ordered = sorted(pairs)
    if len(ordered) > 1 and len(dict(ordered)) < len(ordered):  # a repeated key: last wins
        ordered = sorted(dict(pairs).items())
    return tuple(ordered)


def _strictly_increasing_per_row(offsets: pa.Array, keys: pa.Array) -> bool:
    """True when every row's keys are in strictly increasing order (sorted, none repeated)."""
    rows = pa.ListArray.from_arrays(offsets, keys)
    flat = rows.flatten()
    count = len(flat)
    if count < 2:
        return True
    parents = pc.list_parent_indices(rows)
    same_row = pc.equal(parents.slice(0, count - 1), parents.slice(1))
    increasing = pc.less(flat.slice(0, count - 1), flat.slice(1))  # UTF-8 order = code points
    return bool(pc.all(pc.or_(pc.invert(same_row), increasing)).as_py())


def _string_tags(array: pa.MapArray) -> Cells[Tags] | None:
    """The common case, map<string, string> without null values or empty keys, column-wise.

    Several times faster than ``to_pylist``: Arrow trims and checks all entries at once, and
    when every row's keys are already sorted (writers often emit them so) a row is just a
    slice. None when the general path must decide.
    """
    keys, items = decoded(array.keys), decoded(array.items)
    if not all(
        pa.types.is_string(a.type) or pa.types.is_large_string(a.type) for a in (keys, items)
    ):
        return None
    keys, items = pc.utf8_trim_whitespace(keys), pc.utf8_trim_whitespace(items)
    if items.null_count or pc.any(pc.equal(pc.utf8_length(keys), 0)).as_py():
        return None
    # .keys/.items are the whole child arrays and .offsets index into them, even for a slice.
    pairs = list(zip(keys.to_pylist(), items.to_pylist(), strict=True))
    offsets: list[int] = array.offsets.to_pylist()
    valid: Iterable[bool] = array.is_valid().to_pylist() if array.null_count else repeat(True)
    bounds = zip(offsets, offsets[1:], valid)  # noqa: B905 - valid may be repeat()
    if _strictly_increasing_per_row(array.offsets, keys):
        return [tuple(pairs[a:b]) if ok else None for a, b, ok in bounds]
    return [_sorted_pairs(pairs[a:b]) if ok else None for a, b, ok in bounds]


def _tags(array: pa.Array) -> Cells[Tags]:
    array = decoded(array)
    kind = array.type
    if pa.types.is_map(kind):
        fast = _string_tags(array)
        if fast is not None:
            return fast
    values: list[Any] = array.to_pylist()
    if pa.types.is_map(kind):
        return [None if v is None else _tags_from_pairs(v) for v in values]
    if pa.types.is_struct(kind):
        return [None if v is None else _tags_from_pairs(v.items()) for v in values]
    if _is_list(kind):
        return [None if v is None else _tags_from_labels(v) for v in values]
    return [None if v is None else _tags_from_text(_text_of(v)) for v in values]


#: Provider parameters as a row gives them (checked against the model table later).
Params = dict[str, Any]


def _params_text(text: str) -> Params | Bad | None:
    text = text.strip()
    if not text:
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        return Bad('is not a JSON object such as {"quality": "low"}')
    if not isinstance(parsed, dict):
        return Bad('is not a JSON object such as {"quality": "low"}')
    return {str(k): v for k, v in parsed.items() if v is not None} or None


def _params(array: pa.Array) -> Cells[Params]:
    """Params cells: a map's pairs, a struct's fields (nulls left out) or JSON text."""
    array = decoded(array)
    values: list[Any] = array.to_pylist()
    kind = array.type
    if pa.types.is_map(kind):
        return [
            None if not v else {str(k): x for k, x in v if x is not None} or None for v in values
        ]
    if pa.types.is_struct(kind):
        return [
            None if v is None else {k: x for k, x in v.items() if x is not None} or None
            for v in values
        ]
    return [None if v is None else _params_text(_text_of(v)) for v in values]


def _models(array: pa.Array) -> Cells[tuple[str, ...]]:
    """A row's models: a list of names, or one string of names separated by commas."""
    array = decoded(array)
    values: list[Any] = array.to_pylist()
    if _is_text(array.type):
        return [None if v is None else models_from_text(_text_of(v)) for v in values]
    return [
        None if not v else tuple(str(m).strip() for m in v if m and str(m).strip()) or None
        for v in values
    ]


def models_from_text(text: str) -> tuple[str, ...] | None:
    """``"a, b,c"`` (or a JSON list) → ``("a", "b", "c")``; None when it names none."""
    text = text.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except ValueError:
            items = []
        names = [str(item).strip() for item in items if str(item).strip()]
    else:
        names = [part.strip() for part in text.split(",") if part.strip()]
    return tuple(dict.fromkeys(names)) or None


#: Column → coercion function, in the order the manifest's row checker takes the cells.
COERCE: Final[dict[str, Callable[[pa.Array], list[Any]]]] = {
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
    "priority": _ints,
    "params": _params,
    "models": _models,
    "expected_text": _expected_texts,
}
