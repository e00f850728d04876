"""Column-wise manifest checks: a whole record batch validated and keyed with Arrow compute.

The common manifest row (generate, clean text, integer ``n``/``seed``, map tags) needs no
Python object of its own: :func:`check_block` validates every row of a record batch with
``pyarrow.compute`` (lengths, ranges, edge whitespace, control characters, model/mode/size
combinations resolved once per distinct value) and builds, still in Arrow, each row's
canonical key prefix (``qwbatch.keys``: the JSON array up to the seed) and the pieces of its
shard line. Rows the vectorised path cannot vouch for (edit inputs, rejects, repeated ids,
odd text, types it does not handle) go to ``slow``: ``ManifestReader``'s row checker sees
them one by one, exactly as before, so every reject keeps its reason.

The keys are hashed by the caller (one sha256 per row over the prefixes, see
:func:`key_rows`); ``tests/test_manifest_vector.py`` pins them byte-for-byte to ``keys.py``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

from qwbatch.keys import KEY_VERSION, SEED_MAX
from qwbatch.manifest_columns import decoded

#: Characters that send a text cell to the row checker: controls (JSON and keys escape
#: them specially; ids refuse them) and Unicode separators at either end (Python's strip()
#: would remove them).
_ODD_TEXT: Final = r"[\x{00}-\x{1f}\x{7f}-\x{9f}]|^\p{Z}|\p{Z}$"
_ID_CONTROL: Final = r"[\x{00}-\x{1f}\x{7f}-\x{9f}]"
_ALL_SPACE: Final = r"^\p{Z}+$"
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
    :data:`FAST_COLUMNS` plus ``prefix``, ``line_head``, ``line_mid``, ``line_tail``);
    ``slow`` the batch-relative indices of the other rows, for the row checker.
    """

    fast: pa.Table
    slow: list[int]


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


def _quoted(text: pa.Array) -> pa.Array:
    """JSON strings (``"…"``) of control-free text; null cells stay null."""
    escaped = pc.replace_substring(pc.replace_substring(text, "\\", "\\\\"), '"', '\\"')
    return pc.binary_join_element_wise('"', escaped, '"', "")


def _json_or_null(text: pa.Array | None, rows: int) -> pa.Array:
    if text is None:
        return pa.array(["null"] * rows, pa.string())
    return pc.fill_null(_quoted(text), "null")


def _odd(text: pa.Array) -> pa.Array:
    """Per cell: true when the row checker must see it (see _ODD_TEXT); null → false."""
    return pc.fill_null(pc.match_substring_regex(text, _ODD_TEXT), False)


def _tags(batch: pa.RecordBatch, rows: int) -> tuple[pa.Array, pa.Array]:
    """(tags as map<string,string> with null for none, their JSON ``[["k", "v"], …]``).

    Only the common, already-normal form is taken: map<string,string> whose keys are
    non-empty, sorted, unique and free of edge whitespace and controls, values likewise
    clean and never null. Anything else raises _Unsupported (the row checker normalises it).
    """
    if "tags" not in batch.schema.names or pa.types.is_null(batch.column("tags").type):
        return pa.nulls(rows, TAGS_TYPE), pa.array(["[]"] * rows, pa.string())
    array = decoded(batch.column("tags"))
    if not pa.types.is_map(array.type):
        raise _Unsupported
    keys, items = decoded(array.keys), decoded(array.items)
    if not (_is_str(keys.type) and _is_str(items.type)) or items.null_count:
        raise _Unsupported
    keys, items = pc.cast(keys, pa.string()), pc.cast(items, pa.string())
    if len(keys) and (
        pc.any(pc.equal(pc.utf8_length(keys), 0)).as_py()
        or pc.any(_odd(keys)).as_py()
        or pc.any(_odd(items)).as_py()
        or not pc.all(pc.equal(pc.utf8_trim_whitespace(keys), keys)).as_py()
        or not pc.all(pc.equal(pc.utf8_trim_whitespace(items), items)).as_py()
    ):
        raise _Unsupported
    offsets = array.offsets
    per_row = pa.ListArray.from_arrays(offsets, keys)
    flat = per_row.flatten()
    if len(flat) > 1:
        parents = pc.list_parent_indices(per_row)
        same = pc.equal(parents.slice(0, len(flat) - 1), parents.slice(1))
        rising = pc.less(flat.slice(0, len(flat) - 1), flat.slice(1))
        if not pc.all(pc.or_(pc.invert(same), rising)).as_py():
            raise _Unsupported
    # .keys/.items are the whole children; offsets index into them, even for a slice.
    pairs = pc.binary_join_element_wise("[", _quoted(keys), ", ", _quoted(items), "]", "")
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, pairs), ", ")
    json_tags = pc.binary_join_element_wise("[", pc.fill_null(joined, ""), "]", "")
    if array.null_count:
        json_tags = pc.if_else(array.is_valid(), json_tags, "[]")
    normal = pa.MapArray.from_arrays(offsets, keys, items, mask=array.is_null())
    return normal.cast(TAGS_TYPE), json_tags


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
        return Block(fast=_empty(), slow=list(range(rows)))


def _check(
    batch: pa.RecordBatch, offset: int, resolve: Resolve, candidates: pa.Array | None
) -> Block:
    rows = batch.num_rows
    ids = decoded(batch.column("id"))
    if pa.types.is_integer(ids.type):
        ids = pc.cast(ids, pa.string())
    elif _is_str(ids.type):
        ids = pc.cast(ids, pa.string())
    else:
        raise _Unsupported
    prompt = _text(batch, "prompt")
    if prompt is None:
        return Block(fast=_empty(), slow=list(range(rows)))
    model, mode, size = (_text(batch, c) for c in ("model", "mode", "size"))
    negative = _text(batch, "negative_prompt")
    n, seed, priority = (_ints(batch, c) for c in ("n", "seed", "priority"))
    extend, watermark = (_bools(batch, c) for c in ("prompt_extend", "watermark"))
    tags, tags_json = _tags(batch, rows)

    # id: present, non-empty, not all spaces, bounded, no controls, not a repeated id
    id_len = pc.utf8_length(ids)
    ok = pc.and_(pc.is_valid(ids), pc.greater(id_len, 0))
    ok = pc.and_(ok, pc.less_equal(id_len, _MAX_ID_CHARS))
    ok = pc.and_kleene(ok, pc.invert(pc.match_substring_regex(ids, _ID_CONTROL)))
    ok = pc.and_kleene(ok, pc.invert(pc.match_substring_regex(ids, _ALL_SPACE)))
    if candidates is not None and len(candidates):
        ok = pc.and_kleene(ok, pc.invert(pc.is_in(ids, value_set=candidates)))
    # prompt: present, clean, non-empty
    prompt_len = pc.utf8_length(prompt)
    ok = pc.and_kleene(ok, pc.greater(prompt_len, 0))
    ok = pc.and_kleene(ok, pc.invert(_odd(prompt)))
    # input images belong to edit rows: the row checker resolves them
    if "input_images" in batch.schema.names:
        ok = pc.and_kleene(ok, pc.is_null(batch.column("input_images")))
    # model × mode × size: each distinct combination resolved once
    texts = [pc.fill_null(t, "") if t is not None else None for t in (model, mode, size)]
    for t in texts:
        if t is not None:
            ok = pc.and_kleene(ok, pc.invert(pc.match_substring_regex(t, _ID_CONTROL)))
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
    ok = pc.and_kleene(ok, pc.less_equal(prompt_len, per_row(
        [s.prompt_max if s else 0 for s in settings], pa.int64())))
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
        return Block(fast=_empty(), slow=slow)

    def take(array: pa.Array | None, kind: pa.DataType) -> pa.Array:
        if array is None:
            return pa.nulls(len(fast_rows), kind)
        return pc.take(array, fast_rows)

    model_name = per_row([s.model if s else "" for s in settings], pa.string())
    mode_name = per_row([s.mode if s else "" for s in settings], pa.string())
    size_name = per_row([s.size if s else None for s in settings], pa.string())
    columns = {
        "row_number": pc.add(fast_rows.cast(pa.int64()), offset),
        "row_id": pc.take(ids, fast_rows),
        "model": pc.take(model_name, fast_rows),
        "mode": pc.take(mode_name, fast_rows),
        "prompt": pc.take(prompt, fast_rows),
        "negative_prompt": take(negative, pa.string()),
        "size": pc.take(size_name, fast_rows),
        "n": pc.take(n_value, fast_rows),
        "seed": take(seed, pa.int64()),
        "prompt_extend": take(extend, pa.bool_()),
        "watermark": pc.fill_null(take(watermark, pa.bool_()), False),
        "tags": pc.take(tags, fast_rows),
        "priority": take(priority, pa.int64()),
    }
    count = len(fast_rows)
    q = {name: _json_or_null(columns[name], count) for name in
         ("row_id", "model", "mode", "prompt", "negative_prompt", "size")}
    n_text = pc.cast(columns["n"], pa.string())
    extend_text = pc.fill_null(
        pc.if_else(columns["prompt_extend"], "true", "false"), "null"
    )
    watermark_text = pc.if_else(columns["watermark"], "true", "false")
    # keys.py's canonical form up to the seed: ["qwbatch/1",model,mode,prompt,neg,size,n,
    # extend,watermark,[],
    prefix = pc.binary_join_element_wise(
        f'["{KEY_VERSION}"', q["model"], q["mode"], q["prompt"], q["negative_prompt"],
        q["size"], n_text, extend_text, watermark_text, "[],", ",",
    )
    # The shard line (plan._encode_item's JSON) around the key and the seed.
    head = pc.binary_join_element_wise(
        '{"request": {"row_id": ', q["row_id"], ', "row_number": ',
        pc.cast(columns["row_number"], pa.string()), ', "request_key": "', "",
    )
    mid = pc.binary_join_element_wise(
        '", "model": ', q["model"], ', "mode": ', q["mode"], ', "prompt": ', q["prompt"],
        ', "negative_prompt": ', q["negative_prompt"], ', "size": ', q["size"], ', "n": ',
        n_text, ', "seed": ', "",
    )
    priority_text = pc.fill_null(pc.cast(columns["priority"], pa.string()), "null")
    tail = pc.binary_join_element_wise(
        ', "prompt_extend": ', extend_text, ', "watermark": ', watermark_text,
        ', "input_images": [], "input_sha256": [], "input_notes": [], "tags": ',
        pc.take(tags_json, fast_rows), ', "priority": ', priority_text,
        '}, "aliases": []}', "",
    )
    table = pa.table({**columns, "prefix": prefix, "line_head": head, "line_mid": mid,
                      "line_tail": tail})
    return Block(fast=table, slow=slow)


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
        ("prefix", pa.string()),
        ("line_head", pa.string()),
        ("line_mid", pa.string()),
        ("line_tail", pa.string()),
    ]
)


def _empty() -> pa.Table:
    return _EMPTY_SCHEMA.empty_table()


def key_rows(
    prefixes: Sequence[str], seeds: Sequence[int | None]
) -> tuple[list[bytes], list[int]]:
    """Per row, the sha256 digest of its canonical form and its seed (``keys.key_and_seed``
    over prefixes built column-wise): a missing seed is derived from the seed-less form."""
    digests: list[bytes] = []
    out_seeds: list[int] = []
    sha256 = hashlib.sha256
    from_bytes = int.from_bytes
    for prefix, seed in zip(prefixes, seeds, strict=True):
        digest = sha256(prefix.encode())
        if seed is None:
            derived = digest.copy()
            derived.update(b"null]")
            seed = from_bytes(derived.digest()[:4], "big") & SEED_MAX
        digest.update(b"%d]" % seed)
        digests.append(digest.digest())
        out_seeds.append(seed)
    return digests, out_seeds


def json_text(value: str | None) -> str:
    """A cell as JSON (for lines written outside Arrow)."""
    return json.dumps(value, ensure_ascii=False)
