"""Column-wise manifest checks: a whole record batch validated and keyed with Arrow compute.

The common manifest row (generate, clean text, integer ``n``/``seed``, map tags) needs no
Python object of its own: :func:`check_block` validates every row of a record batch with
``pyarrow.compute`` (lengths, ranges, edge whitespace, control characters, model/mode/size
combinations resolved once per distinct value) and builds, still in Arrow, each row's
canonical key prefix (``qwbatch.core.keys``: the JSON array up to the seed) and the pieces of its
shard line. Rows the vectorised path cannot vouch for (edit inputs, rejects, repeated ids,
odd text, types it does not handle) go to ``slow``: ``ManifestReader``'s row checker sees
them one by one, exactly as before, so every reject keeps its reason.

The keys are hashed by the caller (one sha256 per row over the prefixes, see
:func:`key_rows`); ``tests/plan/test_plan_stream.py`` pins them byte-for-byte to ``keys.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring  # the C JSON string quoter, as keys.py
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

from qwbatch.core.keys import KEY_VERSION, SEED_MAX
from qwbatch.manifest.columns import decoded

#: Characters that send a text cell to the row checker: controls (JSON and keys escape
#: them specially; ids refuse them) and Unicode separators at either end (Python's strip()
#: would remove them).
_ODD_TEXT: Final = r"[\x{00}-\x{1f}\x{7f}-\x{9f}]|^\p{Z}|\p{Z}$"
#: Separates model, mode and size in one combined cell (controls never reach it).
_SEP: Final = "\x1f"
_MAX_ID_CHARS: Final = 256
#: The tags column's Arrow type in fast blocks (and in the catalog).
TAGS_TYPE: Final = pa.map_(pa.string(), pa.string())


@dataclass(frozen=True, slots=True)
class Setting:
    """A (model, mode, size) combination the row checker accepted, as the key needs it."""

    model: str
    mode: str
    size: str | None
    prompt_max: int
    negative_max: int
    n_max: int


#: ``(model text, mode text, size text) -> Setting`` or None (the row checker decides).
Resolve = Callable[[str, str, str], "Setting | None"]


@dataclass(frozen=True, slots=True)
class Block:
    """One record batch after the vectorised checks.

    ``fast`` holds the accepted rows the vectorised path vouches for (columns
    :data:`FAST_COLUMNS`), ``rows`` the same rows as Python lists (None when there are
    none); ``slow`` the batch-relative indices of the other rows, for the row checker.
    """

    fast: pa.Table
    slow: list[int]
    rows: FastRows | None


FAST_COLUMNS: Final = (
    "row_number",
    "row_id",
    "model",
    "mode",
    "prompt",
    "negative_prompt",
    "size",
    "n",
    "seed",
    "prompt_extend",
    "watermark",
    "tags",
    "priority",
)


def _is_str(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def _text(batch: pa.RecordBatch, name: str) -> pa.Array | None:
    """A string column as string (null cells kept); None when absent or all-null type.
    Raises _Unsupported for types the fast path does not take."""
    if name not in batch.schema.names:
        return None
    array = decoded(batch.column(name))
    if pa.types.is_null(array.type):
        return None
    if not _is_str(array.type):
        raise _Unsupported
    return pc.cast(array, pa.string())


def _ints(batch: pa.RecordBatch, name: str) -> pa.Array | None:
    if name not in batch.schema.names:
        return None
    array = decoded(batch.column(name))
    if pa.types.is_null(array.type):
        return None
    if not pa.types.is_integer(array.type):
        raise _Unsupported
    return pc.cast(array, pa.int64(), safe=False) if array.type != pa.int64() else array


def _bools(batch: pa.RecordBatch, name: str) -> pa.Array | None:
    if name not in batch.schema.names:
        return None
    array = decoded(batch.column(name))
    if pa.types.is_null(array.type):
        return None
    if not pa.types.is_boolean(array.type):
        raise _Unsupported
    return array


class _Unsupported(Exception):
    """A column of a type the vectorised path leaves to the row checker."""


def _odd(text: pa.Array) -> pa.Array:
    """Per cell: true when the row checker must see it (see _ODD_TEXT); null → false.
    ASCII text is decided by two cheap kernels; only other text meets the regex."""
    plain = pc.and_(pc.ascii_is_printable(text), pc.equal(pc.ascii_trim_whitespace(text), text))
    plain = pc.fill_null(plain, True)
    if pc.all(plain).as_py():
        return pc.invert(plain)
    return pc.fill_null(pc.if_else(plain, False, pc.match_substring_regex(text, _ODD_TEXT)), False)


def _tags(batch: pa.RecordBatch, rows: int) -> tuple[pa.Array, pa.Array, pa.Array | None]:
    """(tags as map<string,string>, empty for none, their JSON ``[["k", "v"], …]``, and
    per row whether the vectorised path may take them (None: every row)).

    Only the common, already-normal form is taken: map<string,string> whose keys are
    non-empty, sorted, unique and free of edge whitespace and controls, values likewise
    clean and never null, neither holding ``"`` or ``\\``. Rows with other tags go to the
    row checker (which normalises them); another column type raises _Unsupported.
    """
    if "tags" not in batch.schema.names or pa.types.is_null(batch.column("tags").type):
        empty = pa.MapArray.from_arrays(
            pa.array([0] * (rows + 1), pa.int32()),
            pa.array([], pa.string()),
            pa.array([], pa.string()),
        )
        return empty.cast(TAGS_TYPE), pa.array(["[]"] * rows, pa.string()), None
    array = decoded(batch.column("tags"))
    if not pa.types.is_map(array.type):
        raise _Unsupported
    keys, items = decoded(array.keys), decoded(array.items)
    if not (_is_str(keys.type) and _is_str(items.type)):
        raise _Unsupported
    keys, items = pc.cast(keys, pa.string()), pc.cast(items, pa.string())
    # .keys/.items are the whole children; offsets index into them, even for a slice.
    offsets = array.offsets
    per_row = pa.ListArray.from_arrays(offsets, keys)
    flat_keys = per_row.flatten()
    flat_items = pa.ListArray.from_arrays(offsets, items).flatten()
    count = len(flat_keys)
    ok: pa.Array | None = None
    if count:
        bad = pc.or_(pc.equal(pc.utf8_length(flat_keys), 0), _odd(flat_keys))
        bad = pc.or_(bad, pc.or_(_odd(flat_items), pc.is_null(flat_items)))
        for text in (flat_keys, flat_items):
            for quote in ('"', "\\"):
                if _may_contain(text, quote):
                    bad = pc.or_(bad, pc.fill_null(pc.match_substring(text, quote), False))
        parents = pc.list_parent_indices(per_row)
        if count > 1:  # each row's keys strictly increasing (sorted, none repeated)
            same = pc.equal(parents.slice(0, count - 1), parents.slice(1))
            rising = pc.less(flat_keys.slice(0, count - 1), flat_keys.slice(1))
            falls = pc.and_(same, pc.invert(rising))
            bad = pc.or_(bad, pa.concat_arrays([falls, pa.array([False])]))
        bad_rows = pc.unique(pc.filter(parents, bad))
        if len(bad_rows):
            ok = pc.invert(pc.is_in(pa.array(range(rows), pa.int64()), value_set=bad_rows))
    if array.null_count:  # a null cell is no tags; one spanning entries is the checker's
        spans = pc.and_(array.is_null(), pc.greater(pc.list_value_length(per_row), 0))
        if pc.any(spans).as_py():
            ok = pc.and_(ok, pc.invert(spans)) if ok is not None else pc.invert(spans)
    # [["k1", "v1"], ["k2", "v2"]] from joins with separators (no quoting needed, see above)
    pairs = pc.binary_join_element_wise(keys, items, '", "')
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, pairs), '"], ["')
    json_tags = pc.binary_join_element_wise('[["', joined, '"]]', "")
    json_tags = pc.if_else(pc.equal(pc.list_value_length(per_row), 0), "[]", json_tags)
    if array.null_count:
        json_tags = pc.if_else(array.is_valid(), json_tags, "[]")
    # Null cells become empty maps (no tags), as the catalog records them.
    return pa.MapArray.from_arrays(offsets, keys, items).cast(TAGS_TYPE), json_tags, ok


def check_block(
    batch: pa.RecordBatch, offset: int, resolve: Resolve, candidates: pa.Array | None
) -> Block:
    """Validate ``batch`` (rows ``offset`` …) column-wise; see :class:`Block`.

    ``resolve`` decides each distinct (model, mode, size) combination once; ``candidates``
    are ids that occur more than once in the manifest (their rows go to the row checker,
    which knows which one came first).
    """
    rows = batch.num_rows
    try:
        return _check(batch, offset, resolve, candidates)
    except _Unsupported:
        return Block(fast=_empty(), slow=list(range(rows)), rows=None)


def _check(
    batch: pa.RecordBatch, offset: int, resolve: Resolve, candidates: pa.Array | None
) -> Block:
    rows = batch.num_rows
    ids = decoded(batch.column("id"))
    if pa.types.is_integer(ids.type) or _is_str(ids.type):
        ids = pc.cast(ids, pa.string())
    else:
        raise _Unsupported
    prompt = _text(batch, "prompt")
    if prompt is None:
        return Block(fast=_empty(), slow=list(range(rows)), rows=None)
    model, mode, size = (_text(batch, c) for c in ("model", "mode", "size"))
    negative = _text(batch, "negative_prompt")
    n, seed, priority = (_ints(batch, c) for c in ("n", "seed", "priority"))
    extend, watermark = (_bools(batch, c) for c in ("prompt_extend", "watermark"))
    tags, tags_json, tags_ok = _tags(batch, rows)

    # id: present, non-empty, not all spaces, bounded, no controls, not a repeated id
    id_len = pc.utf8_length(ids)
    ok = pc.and_(pc.is_valid(ids), pc.greater(id_len, 0))
    ok = pc.and_(ok, pc.less_equal(id_len, _MAX_ID_CHARS))
    ok = pc.and_kleene(ok, pc.invert(_odd(ids)))  # also catches all-space ids
    if candidates is not None and len(candidates):
        ok = pc.and_kleene(ok, pc.invert(pc.is_in(ids, value_set=candidates)))
    if tags_ok is not None:
        ok = pc.and_kleene(ok, tags_ok)
    # prompt: present, clean, non-empty
    prompt_len = pc.utf8_length(prompt)
    ok = pc.and_kleene(ok, pc.greater(prompt_len, 0))
    ok = pc.and_kleene(ok, pc.invert(_odd(prompt)))
    # input images belong to edit rows: the row checker resolves them
    if "input_images" in batch.schema.names:
        ok = pc.and_kleene(ok, pc.is_null(batch.column("input_images")))
    # expected text is parsed (lists, JSON, "|") by the row checker, like the inputs
    if "expected_text" in batch.schema.names:
        ok = pc.and_kleene(ok, pc.is_null(batch.column("expected_text")))
    # provider params and several models per row: the row checker's work too
    for name in ("params", "models"):
        if name in batch.schema.names:
            ok = pc.and_kleene(ok, pc.is_null(batch.column(name)))
    # model × mode × size: each distinct combination resolved once
    texts = [pc.fill_null(t, "") if t is not None else None for t in (model, mode, size)]
    for t in texts:
        if t is not None:
            ok = pc.and_kleene(ok, pc.invert(_odd(t)))  # so _SEP cannot occur inside
    combo = pc.binary_join_element_wise(
        *[t if t is not None else pa.array([""] * rows, pa.string()) for t in texts], _SEP
    )
    encoded = pc.dictionary_encode(combo)
    settings = [resolve(*value.split(_SEP)) for value in encoded.dictionary.to_pylist()]
    index = encoded.indices

    def per_row(values: Sequence[Any], kind: pa.DataType) -> pa.Array:
        return pc.take(pa.array(values, kind), index)

    accepted = per_row([s is not None for s in settings], pa.bool_())
    ok = pc.and_kleene(ok, accepted)
    ok = pc.and_kleene(
        ok,
        pc.less_equal(
            prompt_len, per_row([s.prompt_max if s else 0 for s in settings], pa.int64())
        ),
    )
    if negative is not None:
        neg_ok = pc.and_(
            pc.invert(_odd(negative)),
            pc.and_(
                pc.greater(pc.utf8_length(negative), 0),
                pc.less_equal(
                    pc.utf8_length(negative),
                    per_row([s.negative_max if s else 0 for s in settings], pa.int64()),
                ),
            ),
        )
        ok = pc.and_kleene(ok, pc.or_kleene(pc.is_null(negative), neg_ok))
    n_max = per_row([s.n_max if s else 0 for s in settings], pa.int64())
    n_value = pc.fill_null(n, 1) if n is not None else pa.array([1] * rows, pa.int64())
    ok = pc.and_kleene(ok, pc.and_(pc.greater_equal(n_value, 1), pc.less_equal(n_value, n_max)))
    if seed is not None:
        in_range = pc.and_(pc.greater_equal(seed, 0), pc.less_equal(seed, SEED_MAX))
        ok = pc.and_kleene(ok, pc.or_kleene(pc.is_null(seed), in_range))
    ok = pc.fill_null(ok, False)

    fast_rows = pc.indices_nonzero(ok)
    slow = pc.indices_nonzero(pc.invert(ok)).to_pylist()
    if not len(fast_rows):
        return Block(fast=_empty(), slow=slow, rows=None)

    every = len(fast_rows) == rows  # the usual batch: no row to leave out

    def pick(array: pa.Array) -> pa.Array:
        return array if every else pc.take(array, fast_rows)

    def take(array: pa.Array | None, kind: pa.DataType) -> pa.Array:
        return pa.nulls(len(fast_rows), kind) if array is None else pick(array)

    combos = pick(index)
    columns = {
        "row_number": pc.add(fast_rows.cast(pa.int64()), offset),
        "row_id": pick(ids),
        "model": pc.take(pa.array([s.model if s else "" for s in settings]), combos),
        "mode": pc.take(pa.array([s.mode if s else "" for s in settings]), combos),
        "prompt": pick(prompt),
        "negative_prompt": take(negative, pa.string()),
        "size": pc.take(pa.array([s.size if s else None for s in settings], pa.string()), combos),
        "n": pick(n_value),
        "seed": take(seed, pa.int64()),
        "prompt_extend": take(extend, pa.bool_()),
        "watermark": pc.fill_null(take(watermark, pa.bool_()), False),
        "tags": pick(tags),
        "priority": take(priority, pa.int64()),
    }
    table = pa.table(columns)
    quoted = [_SettingText.of(s) for s in settings]
    prompt_json = _escaped(columns["prompt"])
    negative_json = (
        pc.fill_null(
            pc.binary_join_element_wise('"', _escaped(columns["negative_prompt"]), '"', ""), "null"
        )
        if negative is not None
        else pa.array(["null"] * len(combos), pa.string())
    )
    extend_json = pc.fill_null(pc.if_else(columns["prompt_extend"], "true", "false"), "null")
    # keys.py's canonical form up to the seed, joined by ",":
    # ["qwbatch/1",model,mode | prompt | negative | size | n | extend | watermark | [] | ""
    prefixes = pc.binary_join_element_wise(
        pc.take(pa.array([t.head for t in quoted], pa.string()), combos),
        pc.binary_join_element_wise('"', prompt_json, '"', ""),
        negative_json,
        pc.take(pa.array([t.size for t in quoted], pa.string()), combos),
        pc.cast(columns["n"], pa.string()),
        extend_json,
        pc.if_else(columns["watermark"], "true", "false"),
        "[]",
        "",
        ",",
    )
    rows = FastRows(
        settings=quoted,
        prefixes=pc.cast(prefixes, pa.binary()).to_pylist(),
        seeds=_pylist(seed, columns["seed"]),
        lines=pa.record_batch(
            {
                "combo": combos,
                "row_id": _escaped(columns["row_id"]),
                "row_number": columns["row_number"],
                "prompt": prompt_json,
                "negative_prompt": negative_json,
                "n": columns["n"],
                "prompt_extend": extend_json,
                "watermark": columns["watermark"],
                "priority": columns["priority"],
                "tags": pick(tags_json),
            }
        ),
    )
    return Block(fast=table, slow=slow, rows=rows)


def _escaped(text: pa.Array) -> pa.Array:
    """JSON string content (no quotes) of text free of control characters: ``\\`` and
    ``"`` escaped, as ``json.encoder.encode_basestring`` does (each pass only if needed)."""
    for char in ("\\", '"'):
        if _may_contain(text, char):
            text = pc.replace_substring(text, char, "\\" + char)
    return text


def _may_contain(text: pa.Array, char: str) -> bool:
    """Whether a cell of ``text`` may hold ``char``: a byte search of the data buffer (which
    may extend past a sliced array; a false yes only costs a replace), much faster than
    ``match_substring``."""
    data = text.buffers()[2]
    return data is not None and char.encode() in data.to_pybytes()


def _pylist(source: pa.Array | None, column: pa.Array) -> list[Any]:
    """A column as Python values; an absent column is all None without converting."""
    return [None] * len(column) if source is None else column.to_pylist()


@dataclass(frozen=True, slots=True)
class _SettingText:
    """A Setting's values as JSON text, and the canonical form's head (``["qwbatch/1",
    model,mode``), computed once per distinct combination."""

    head: str
    model: str
    mode: str
    size: str

    @classmethod
    def of(cls, setting: Setting | None) -> _SettingText:
        if setting is None:  # never taken: its rows are not fast
            return cls("", "", "", "")
        model, mode = encode_basestring(setting.model), encode_basestring(setting.mode)
        size = "null" if setting.size is None else encode_basestring(setting.size)
        return cls(f'["{KEY_VERSION}",{model},{mode}', model, mode, size)


@dataclass(slots=True)
class FastRows:
    """What keying and shard lines need of the fast rows: the canonical prefixes (UTF-8,
    up to the seed) and seeds as Python lists, the rest of a shard line as Arrow columns
    (text as JSON: escaped contents of ``row_id`` and ``prompt``, a JSON value for
    ``negative_prompt``, ``prompt_extend`` and ``tags``), joined only for the rows whose
    lines are written."""

    settings: list[_SettingText]
    prefixes: list[bytes]
    seeds: list[int | None]
    lines: pa.RecordBatch


_EMPTY_SCHEMA: Final = pa.schema(
    [
        ("row_number", pa.int64()),
        ("row_id", pa.string()),
        ("model", pa.string()),
        ("mode", pa.string()),
        ("prompt", pa.string()),
        ("negative_prompt", pa.string()),
        ("size", pa.string()),
        ("n", pa.int64()),
        ("seed", pa.int64()),
        ("prompt_extend", pa.bool_()),
        ("watermark", pa.bool_()),
        ("tags", TAGS_TYPE),
        ("priority", pa.int64()),
    ]
)


def _empty() -> pa.Table:
    return _EMPTY_SCHEMA.empty_table()


def key_rows(rows: FastRows | None) -> tuple[list[bytes], list[int]]:
    """Per fast row, the sha256 digest of its canonical form (``keys.canonical_request``)
    and its seed: the one given, or derived from the seed-less form (``keys.key_and_seed``).
    """
    digests: list[bytes] = []
    seeds: list[int] = []
    if rows is None:
        return digests, seeds
    sha256, from_bytes = hashlib.sha256, int.from_bytes
    append_digest, append_seed = digests.append, seeds.append
    for prefix, seed in zip(rows.prefixes, rows.seeds, strict=True):
        digest = sha256(prefix)
        if seed is None:
            derived = digest.copy()
            derived.update(b"null]")
            seed = from_bytes(derived.digest()[:4], "big") & SEED_MAX
        digest.update(b"%d]" % seed)
        append_digest(digest.digest())
        append_seed(seed)
    return digests, seeds


def hex_keys(digests: Sequence[bytes]) -> pa.Array:
    """The sha256 digests as lowercase hex (request keys): one string array, hexed at once."""
    width = 64
    count = len(digests)
    text = pa.py_buffer(b"".join(digests).hex().encode("ascii"))
    offsets = pa.array(range(0, width * count + 1, width), pa.int32()).buffers()[1]
    return pa.StringArray.from_buffers(count, offsets, text)


def shard_lines(rows: FastRows, chosen: pa.Array, keys: pa.Array, seeds: pa.Array) -> pa.Array:
    """The shard lines (``plan.encode_line``'s JSON, then a newline) of the fast rows at
    ``chosen`` (int64 indices), joined in Arrow into one string array, no Python string per
    line. ``keys`` (hex) and ``seeds`` are per fast row."""
    texts = rows.settings
    picked = rows.lines.take(chosen)
    combos = picked["combo"]

    def per_combo(values: list[str]) -> pa.Array:
        return pc.take(pa.array(values, pa.string()), combos)

    def text(numbers: pa.Array) -> pa.Array:
        return pc.cast(numbers, pa.string())

    return pc.binary_join_element_wise(
        '{"request": {"row_id": "',
        picked["row_id"],
        '", "row_number": ',
        text(picked["row_number"]),
        ', "request_key": "',
        keys.take(chosen),
        '", "model": ',
        per_combo([t.model for t in texts]),
        ', "mode": ',
        per_combo([t.mode for t in texts]),
        ', "prompt": "',
        picked["prompt"],
        '", "negative_prompt": ',
        picked["negative_prompt"],
        ', "size": ',
        per_combo([t.size for t in texts]),
        ', "n": ',
        text(picked["n"]),
        ', "seed": ',
        text(seeds.take(chosen)),
        ', "prompt_extend": ',
        picked["prompt_extend"],
        ', "watermark": ',
        pc.if_else(picked["watermark"], "true", "false"),
        ', "input_images": [], "input_sha256": [], "input_notes": [], "tags": ',
        picked["tags"],
        ', "priority": ',
        pc.fill_null(text(picked["priority"]), "null"),
        '}, "aliases": []}\n',
        "",
    )
