"""The manifest reader: real writers' flavours, every rejection reason, strict mode, streaming."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qwbatch.core.errors import ConfigError, ManifestError, PermanentError, StorageError
from qwbatch.core.keys import SEED_MAX, key_of
from qwbatch.core.model_table import ModelTable
from qwbatch.core.types import RenderRequest
from qwbatch.manifest import (
    MANIFEST_SCHEMA,
    MAX_ID_CHARS,
    REJECTS_SCHEMA,
    UNSUPPORTED_INPUT,
    LocalInputResolver,
    ManifestReader,
    Reject,
    read_manifest,
    rejects_table,
)
from qwbatch.manifest.columns import COERCE

TABLE = ModelTable.load()
DEFAULT = "qwen-image-2.0"


def write(path: Path, columns: dict[str, Any], **options: Any) -> Path:
    """Write ``columns`` (lists or Arrow arrays) as a Parquet manifest at ``path``."""
    pq.write_table(pa.table(columns), path, **options)
    return path


def read_all(
    path: Path, *, table: ModelTable = TABLE, **options: Any
) -> tuple[list[RenderRequest], list[Reject], ManifestReader]:
    reader = read_manifest(path, table=table, default_model=DEFAULT, **options)
    requests, rejects = reader.collect()
    return requests, rejects, reader


def one_row(tmp_path: Path, **cells: Any) -> tuple[list[RenderRequest], list[Reject]]:
    """Read a one-row manifest; ``cells`` override id "r1" / prompt "a red apple"."""
    columns: dict[str, Any] = {"id": ["r1"], "prompt": ["a red apple"]}
    for name, value in cells.items():
        columns[name] = value if isinstance(value, pa.Array) else [value]
    requests, rejects, _ = read_all(write(tmp_path / "one.parquet", columns))
    return requests, rejects


def rejected(tmp_path: Path, **cells: Any) -> Reject:
    """The single reject of a one-row manifest that must be refused."""
    requests, rejects = one_row(tmp_path, **cells)
    assert requests == []
    assert len(rejects) == 1, rejects
    return rejects[0]


def accepted(tmp_path: Path, **cells: Any) -> RenderRequest:
    requests, rejects = one_row(tmp_path, **cells)
    assert rejects == []
    assert len(requests) == 1
    return requests[0]


@pytest.fixture
def images(tmp_path: Path) -> dict[str, str]:
    """Four input images next to the manifest: relative path -> sha256 of the bytes."""
    (tmp_path / "inputs").mkdir()
    digests = {}
    for name in ("a.png", "b.png", "c.png", "d.png"):
        data = f"not really a png: {name}".encode()
        (tmp_path / "inputs" / name).write_bytes(data)
        digests[f"inputs/{name}"] = hashlib.sha256(data).hexdigest()
    return digests


# --------------------------------------------------------------------------- normalisation


def test_a_full_row_is_normalised(tmp_path: Path, images: dict[str, str]) -> None:
    path = write(
        tmp_path / "m.parquet",
        {
            "id": ["sku-1"],
            "prompt": ["  Put the mug on a marble counter \n"],
            "mode": [" EDIT "],
            "model": ["qwen-image-edit-plus"],
            "negative_prompt": ["   "],
            "size": ["1024 x 768"],
            "n": pa.array([2], pa.int32()),
            "seed": pa.array([7], pa.int64()),
            "prompt_extend": [True],
            "watermark": [None],
            "input_images": [["inputs/a.png", " inputs/b.png "]],
            "tags": pa.array(
                [[("sku", "123"), ("campaign", "spring")]], pa.map_(pa.string(), pa.string())
            ),
        },
    )
    requests, rejects, _ = read_all(path)
    assert rejects == []
    [request] = requests
    expected = RenderRequest(
        row_id="sku-1",
        row_number=0,
        request_key=request.request_key,
        model="qwen-image-edit-plus",
        mode="edit",
        prompt="Put the mug on a marble counter",
        negative_prompt=None,
        size="1024*768",
        n=2,
        seed=7,
        prompt_extend=True,
        watermark=False,
        input_images=("inputs/a.png", "inputs/b.png"),
        input_sha256=(images["inputs/a.png"], images["inputs/b.png"]),
        tags=(("campaign", "spring"), ("sku", "123")),
    )
    assert request == expected
    assert request.request_key == key_of(request)


def test_defaults_for_a_minimal_row(tmp_path: Path) -> None:
    request = accepted(tmp_path)
    assert (request.model, request.mode, request.n, request.size) == (DEFAULT, "generate", 1, None)
    assert (request.prompt_extend, request.watermark, request.negative_prompt) == (
        None,
        False,
        None,
    )
    assert 0 <= request.seed <= SEED_MAX
    assert request.request_key == key_of(request)


@pytest.mark.parametrize("size", ["1024*768", "1024x768", "1024X768", "1024 * 768", "1024×768"])
def test_size_forms_are_normalised(tmp_path: Path, size: str) -> None:
    assert accepted(tmp_path, size=size).size == "1024*768"


def test_identical_requests_with_different_ids_share_a_key(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.parquet",
        {
            "id": ["a", "b", "c"],
            "prompt": ["a red apple", " a red apple ", "a green apple"],
            "tags": [["x"], ["y=1"], None],
        },
    )
    requests, rejects, _ = read_all(path)
    assert rejects == []
    assert requests[0].request_key == requests[1].request_key != requests[2].request_key
    assert requests[0].seed == requests[1].seed  # derived, reproducible


def test_the_derived_seed_is_stable_across_reads(tmp_path: Path) -> None:
    first = accepted(tmp_path)
    second = accepted(tmp_path)
    assert (first.seed, first.request_key) == (second.seed, second.request_key)


# --------------------------------------------------------------------------- writers' flavours


def _flavour_rows(tmp_path: Path, columns: dict[str, Any]) -> list[RenderRequest]:
    requests, rejects, _ = read_all(write(tmp_path / "flavour.parquet", columns))
    assert rejects == []
    return requests


PLAIN: dict[str, Any] = {
    "id": ["a", "b", "c"],
    "prompt": ["one cat", "two dogs", "three birds"],
    "model": ["qwen-image-2.0", None, "qwen-image-2.0-pro"],
    "size": ["1024*1024", None, "2048x2048"],
    "n": pa.array([1, None, 3], pa.int64()),
    "seed": pa.array([5, None, 2147483647], pa.int64()),
    "watermark": [True, None, False],
}


@pytest.mark.parametrize(
    "variant",
    [
        {
            "n": pa.array([1, None, 3], pa.int32()),
            "seed": pa.array([5, None, 2147483647], pa.uint32()),
        },
        {"n": pa.array([1, None, 3], pa.int8()), "seed": pa.array([5.0, None, 2147483647.0])},
        {
            "id": pa.array(["a", "b", "c"], pa.large_string()),
            "prompt": pa.array(["one cat", "two dogs", "three birds"], pa.large_string()),
        },
        {
            "model": pa.array(["qwen-image-2.0", None, "qwen-image-2.0-pro"]).dictionary_encode(),
            "size": pa.array(["1024*1024", None, "2048x2048"]).dictionary_encode(),
        },
        {"prompt": pa.array([b"one cat", b"two dogs", b"three birds"], pa.binary())},
        {"n": ["1", None, " 3 "], "watermark": ["TRUE", None, "0"]},
        {"watermark": pa.array([1, None, 0], pa.int8())},
    ],
    ids=[
        "int32-uint32",
        "int8-float64",
        "large_string",
        "dictionary",
        "binary",
        "text",
        "int-bool",
    ],
)
def test_type_variants_give_the_same_requests(tmp_path: Path, variant: dict[str, Any]) -> None:
    expected = _flavour_rows(tmp_path, PLAIN)
    assert _flavour_rows(tmp_path, {**PLAIN, **variant}) == expected


def test_integer_ids_become_text(tmp_path: Path) -> None:
    requests = _flavour_rows(tmp_path, {**PLAIN, "id": pa.array([10, 20, 30], pa.int32())})
    assert [r.row_id for r in requests] == ["10", "20", "30"]


def test_all_null_optional_columns(tmp_path: Path) -> None:
    nulls = {
        name: pa.nulls(3)
        for name in (
            "mode",
            "model",
            "negative_prompt",
            "size",
            "n",
            "seed",
            "prompt_extend",
            "watermark",
            "input_images",
            "tags",
        )
    }
    requests = _flavour_rows(tmp_path, {"id": ["a", "b", "c"], "prompt": ["x", "y", "z"], **nulls})
    assert [(r.mode, r.model, r.n, r.watermark) for r in requests] == [
        ("generate", DEFAULT, 1, False)
    ] * 3


@pytest.mark.parametrize(
    "column",
    [
        pa.array([["inputs/a.png", "inputs/b.png"], ["inputs/c.png"]], pa.list_(pa.string())),
        pa.array(
            [["inputs/a.png", "inputs/b.png"], ["inputs/c.png"]], pa.large_list(pa.large_string())
        ),
        pa.array([json.dumps(["inputs/a.png", "inputs/b.png"]), "inputs/c.png"]),
        pa.array(
            [["inputs/a.png", "inputs/b.png"], ["inputs/c.png"]],
            pa.list_(pa.dictionary(pa.int32(), pa.string())),
        ),
    ],
    ids=["list", "large_list", "json-and-single-string", "list-of-dictionary"],
)
def test_input_image_forms(tmp_path: Path, images: dict[str, str], column: pa.Array) -> None:
    path = write(
        tmp_path / "m.parquet",
        {
            "id": ["a", "b"],
            "prompt": ["x", "y"],
            "mode": ["edit", "edit"],
            "input_images": column,
        },
    )
    requests, rejects, _ = read_all(path)
    assert rejects == []
    assert [r.input_images for r in requests] == [
        ("inputs/a.png", "inputs/b.png"),
        ("inputs/c.png",),
    ]
    assert requests[0].input_sha256 == (images["inputs/a.png"], images["inputs/b.png"])
    assert requests[1].input_sha256 == (images["inputs/c.png"],)


TAGS = (("campaign", "spring"), ("sale", ""), ("sku", "123"))


@pytest.mark.parametrize(
    "column",
    [
        pa.array(
            [[("sku", "123"), ("campaign", "spring"), ("sale", "")]],
            pa.map_(pa.string(), pa.string()),
        ),
        pa.array(
            [[("sku", "123"), ("campaign", " spring "), ("sale", ""), ("gone", None)]],
            pa.map_(pa.large_string(), pa.string()),
        ),
        pa.array([["sku=123", "campaign=spring", "sale"]], pa.list_(pa.string())),
        pa.array(
            [{"sku": 123, "campaign": "spring", "sale": "", "gone": None}],
            pa.struct(
                [
                    ("sku", pa.int32()),
                    ("campaign", pa.string()),
                    ("sale", pa.string()),
                    ("gone", pa.string()),
                ]
            ),
        ),
        pa.array([json.dumps({"sku": "123", "campaign": "spring", "sale": ""})]),
        pa.array([json.dumps(["sku=123", "campaign=spring", "sale"])]),
        pa.array(["sku=123, campaign=spring, sale"]),
        pa.array(
            [[("sku", "1"), ("campaign", "spring"), ("sku", "123"), ("sale", "")]],
            pa.map_(pa.string(), pa.string()),
        ),
    ],
    ids=[
        "map",
        "map-large-null-value",
        "list",
        "struct",
        "json-object",
        "json-array",
        "comma-text",
        "map-repeated-key",
    ],
)
def test_tag_forms(tmp_path: Path, column: pa.Array) -> None:
    assert accepted(tmp_path, tags=column).tags == TAGS


def test_tags_with_nulls_and_empties(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.parquet",
        {
            "id": ["a", "b", "c"],
            "prompt": ["x", "y", "z"],
            "tags": pa.array([None, [], [("k", "v")]], pa.map_(pa.string(), pa.string())),
        },
    )
    requests, _, _ = read_all(path)
    assert [r.tags for r in requests] == [(), (), (("k", "v"),)]


def test_map_tags_sorted_or_not_and_sliced() -> None:
    # Map tags take a column-wise path (with a shortcut when every row is already sorted);
    # batches can be slices of a larger array, whose offsets index the whole child arrays.
    rows = [
        [("a", "1"), ("b", "2")],
        None,
        [("b", "2"), ("a", "1")],
        [("k", " v ")],
        [],
        [("x", "1"), ("x", "2")],
    ]
    expected: list[Any] = [
        (("a", "1"), ("b", "2")),
        None,
        (("a", "1"), ("b", "2")),
        (("k", "v"),),
        (),
        (("x", "2"),),
    ]
    column = pa.array(rows, pa.map_(pa.string(), pa.string()))
    coerce = COERCE["tags"]
    assert coerce(column) == expected
    assert coerce(column.slice(2)) == expected[2:]
    assert coerce(column.slice(0, 2)) == expected[:2]  # sorted rows only
    assert coerce(column.slice(3, 2)) == expected[3:5]


def test_a_manifest_written_by_polars(tmp_path: Path, images: dict[str, str]) -> None:
    path = tmp_path / "polars.parquet"
    pl.DataFrame(
        {
            "id": ["p1", "p2"],
            "prompt": ["a poster", "replace the sky"],
            "mode": pl.Series([None, "edit"], dtype=pl.Categorical),
            "n": [2, None],
            "seed": [None, 99],
            "input_images": [None, ["inputs/a.png"]],
            "tags": [{"campaign": "spring", "sku": "1"}, None],
            "watermark": [None, True],
        }
    ).write_parquet(path)
    requests, rejects, reader = read_all(path)
    assert rejects == []
    assert reader.warnings == []
    assert [(r.row_id, r.mode, r.n) for r in requests] == [("p1", "generate", 2), ("p2", "edit", 1)]
    assert requests[0].tags == (("campaign", "spring"), ("sku", "1"))
    assert requests[1].input_sha256 == (images["inputs/a.png"],)
    assert (requests[1].seed, requests[1].watermark) == (99, True)


def test_a_manifest_written_by_duckdb(tmp_path: Path, images: dict[str, str]) -> None:
    path = tmp_path / "duck.parquet"
    # COPY takes no parameter for its target; the path is our own temporary file.
    duckdb.connect().execute(f"""
        COPY (SELECT * FROM (VALUES
            ('d1', 'a poster', NULL, 2, NULL::BIGINT, NULL, MAP {{'campaign': 'spring'}}, false),
            ('d2', 'replace the sky', 'edit', NULL, 5::BIGINT, ['inputs/a.png', 'inputs/b.png'],
             NULL, NULL)
        ) AS t(id, prompt, mode, n, seed, input_images, tags, watermark))
        TO '{path}' (FORMAT parquet)
    """)  # noqa: S608
    requests, rejects, _ = read_all(path)
    assert rejects == []
    assert [(r.row_id, r.mode, r.n, r.tags) for r in requests] == [
        ("d1", "generate", 2, (("campaign", "spring"),)),
        ("d2", "edit", 1, ()),
    ]
    assert requests[1].input_sha256 == (images["inputs/a.png"], images["inputs/b.png"])
    assert requests[1].seed == 5


def test_a_folder_of_part_files_is_one_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "manifest.parquet"  # as Spark writes it
    folder.mkdir()
    write(folder / "part-00000.parquet", {"id": ["a", "b"], "prompt": ["x", "y"]})
    write(
        folder / "part-00001.parquet",
        {
            "id": pa.array(["c", "a"], pa.large_string()),
            "prompt": ["z", "w"],
            "n": pa.array([2, 1], pa.int32()),
        },
    )
    (folder / "_SUCCESS").write_bytes(b"")
    requests, rejects, reader = read_all(folder)
    assert [(r.row_id, r.row_number) for r in requests] == [("a", 0), ("b", 1), ("c", 2)]
    assert rejects == [Reject(3, "a", "id", "duplicate id (first seen at row 0)")]
    assert reader.summary.total_rows == reader.summary.rows_read == 4


def test_the_canonical_schema_round_trips(tmp_path: Path) -> None:
    table = pa.Table.from_pylist(
        [{"id": "a", "prompt": "x", "n": 1, "tags": [("k", "v")], "priority": 3}],
        schema=MANIFEST_SCHEMA,
    )
    pq.write_table(table, tmp_path / "m.parquet")
    requests, rejects, reader = read_all(tmp_path / "m.parquet")
    assert (len(requests), rejects, reader.warnings) == (1, [], [])


def test_unknown_columns_are_reported_once(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.parquet",
        {
            "id": ["a", "b"],
            "prompt": ["x", "y"],
            "colour": ["red", "blue"],
            "Notes": [1, 2],
            "priority": [1, 2],
            "__index_level_0__": [0, 1],
        },
    )
    requests, rejects, reader = read_all(path)
    assert (len(requests), rejects) == (2, [])
    assert reader.warnings == ["ignored unknown column 'colour'", "ignored unknown column 'Notes'"]


# --------------------------------------------------------------------------- rejection reasons


def test_missing_prompt(tmp_path: Path) -> None:
    assert rejected(tmp_path, prompt=None) == Reject(0, "r1", "prompt", "prompt is missing")


def test_empty_prompt(tmp_path: Path) -> None:
    assert rejected(tmp_path, prompt=" \t\n ") == Reject(0, "r1", "prompt", "prompt is empty")


def test_bad_mode(tmp_path: Path) -> None:
    reject = rejected(tmp_path, mode="paint")
    assert (reject.column, reject.reason) == (
        "mode",
        "mode must be 'generate' or 'edit', got 'paint'",
    )


def test_unknown_model_lists_the_known_ones(tmp_path: Path) -> None:
    reject = rejected(tmp_path, model="qwen-image-9")
    assert reject.column == "model"
    assert "unknown model 'qwen-image-9'" in reject.reason
    for name in TABLE.names():
        assert name in reject.reason


def test_a_declared_model_is_accepted(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.parquet",
        {"id": ["a"], "prompt": ["x"], "model": ["my-model"], "n": [4], "size": ["640*480"]},
    )
    requests, rejects, _ = read_all(path, table=ModelTable.load(declared=["my-model"]))
    assert rejects == []
    assert (requests[0].model, requests[0].n, requests[0].size) == ("my-model", 4, "640*480")


@pytest.mark.parametrize("size", ["big", "1024", "1024*768*2", "0*768", "-5*5", "10.5*20", "²*2"])
def test_bad_size_form(tmp_path: Path, size: str) -> None:
    reject = rejected(tmp_path, size=size)
    assert reject.column == "size"
    assert "is not of the form W*H" in reject.reason


@pytest.mark.parametrize(
    ("model", "size", "words"),
    [
        ("qwen-image-2.0", "256*256", "pixels"),  # pixels: too few
        ("qwen-image-2.0-pro", "4096*2048", "pixels"),  # pixels: too many
        ("qwen-image-edit-plus", "300*1024", "each side"),  # sides
        ("qwen-image-max", "1024*1024", "not one of"),  # presets
        ("qwen-image-edit", "1024*1024", "does not accept a size"),  # fixed
    ],
)
def test_size_against_each_size_rule(
    tmp_path: Path, images: dict[str, str], model: str, size: str, words: str
) -> None:
    mode = "edit" if "edit" in model else "generate"
    inputs = ["inputs/a.png"] if mode == "edit" else None
    reject = rejected(
        tmp_path,
        model=model,
        size=size,
        mode=mode,
        input_images=pa.array([inputs], pa.list_(pa.string())),
    )
    assert reject.column == "size"
    assert words in reject.reason


def test_sizes_each_rule_accepts(tmp_path: Path) -> None:
    assert accepted(tmp_path, model="qwen-image-max", size="1664x928").size == "1664*928"
    assert accepted(tmp_path, model="qwen-image-2.0", size="512*512").size == "512*512"


@pytest.mark.parametrize(("model", "n"), [("qwen-image-max", 2), ("qwen-image-2.0", 7)])
def test_n_too_big(tmp_path: Path, model: str, n: int) -> None:
    reject = rejected(tmp_path, model=model, n=n)
    assert reject == Reject(
        0, "r1", "n", f"n={n} but {model} makes at most {TABLE.get(model).n_max}"
    )


@pytest.mark.parametrize("n", [0, -1])
def test_n_below_one(tmp_path: Path, n: int) -> None:
    assert rejected(tmp_path, n=n) == Reject(0, "r1", "n", f"n must be at least 1, got {n}")


@pytest.mark.parametrize("n", [1.5, float("nan"), float("inf")])
def test_n_not_whole(tmp_path: Path, n: float) -> None:
    reject = rejected(tmp_path, n=n)
    assert (reject.column, reject.reason) == ("n", f"n must be a whole number, got {n}")


def test_n_as_bad_text(tmp_path: Path) -> None:
    assert rejected(tmp_path, n="two").reason == "n must be a whole number, got 'two'"


@pytest.mark.parametrize("seed", [-1, SEED_MAX + 1, 2**63 - 1])
def test_seed_out_of_range(tmp_path: Path, seed: int) -> None:
    reject = rejected(tmp_path, seed=seed)
    assert reject == Reject(0, "r1", "seed", f"seed must be in [0, {SEED_MAX}], got {seed}")


def test_seed_bounds_are_accepted(tmp_path: Path) -> None:
    assert accepted(tmp_path, seed=0).seed == 0
    assert accepted(tmp_path, seed=SEED_MAX).seed == SEED_MAX


@pytest.mark.parametrize(("model", "limit"), [("qwen-image-max", 800), ("qwen-image-2.0", 1000)])
def test_prompt_too_long(tmp_path: Path, model: str, limit: int) -> None:
    assert accepted(tmp_path, model=model, prompt="é" * limit).prompt == "é" * limit
    reject = rejected(tmp_path, model=model, prompt="é" * (limit + 1))
    assert reject == Reject(
        0, "r1", "prompt", f"prompt has {limit + 1} characters; {model} allows at most {limit}"
    )


def test_negative_prompt_too_long(tmp_path: Path) -> None:
    assert accepted(tmp_path, negative_prompt="x" * 500).negative_prompt == "x" * 500
    reject = rejected(tmp_path, negative_prompt="x" * 501)
    assert reject == Reject(
        0,
        "r1",
        "negative_prompt",
        "negative_prompt has 501 characters; qwen-image-2.0 allows at most 500",
    )


def test_edit_without_images(tmp_path: Path) -> None:
    reject = rejected(tmp_path, mode="edit")
    assert reject == Reject(0, "r1", "input_images", "mode 'edit' needs 1 to 3 input_images, got 0")


def test_edit_with_more_than_three_images(tmp_path: Path, images: dict[str, str]) -> None:
    reject = rejected(tmp_path, mode="edit", input_images=pa.array([list(images)]))
    assert reject == Reject(0, "r1", "input_images", "mode 'edit' needs 1 to 3 input_images, got 4")


def test_edit_with_three_images(tmp_path: Path, images: dict[str, str]) -> None:
    request = accepted(tmp_path, mode="edit", input_images=pa.array([list(images)[:3]]))
    assert request.input_sha256 == tuple(list(images.values())[:3])


def test_generate_with_images(tmp_path: Path, images: dict[str, str]) -> None:
    reject = rejected(tmp_path, input_images="inputs/a.png")
    assert reject.column == "input_images"
    assert "mode is 'generate'" in reject.reason


def test_missing_input_file(tmp_path: Path, images: dict[str, str]) -> None:
    reject = rejected(tmp_path, mode="edit", input_images="inputs/nope.png")
    assert reject.column == "input_images"
    assert reject.reason.startswith("input image not found: 'inputs/nope.png'")


@pytest.mark.parametrize("uri", ["../outside.png", "inputs/../../outside.png", "/etc/hostname"])
def test_input_path_escaping_the_folder(tmp_path: Path, uri: str) -> None:
    (tmp_path / "manifest").mkdir()
    (tmp_path / "outside.png").write_bytes(b"secret")
    path = write(
        tmp_path / "manifest" / "m.parquet",
        {"id": ["r1"], "prompt": ["x"], "mode": ["edit"], "input_images": [uri]},
    )
    requests, rejects, _ = read_all(path)
    assert requests == []
    [reject] = rejects
    assert reject.column == "input_images"
    assert "the manifest's folder" in reject.reason
    assert ("is outside" if uri.startswith("/") else "escapes") in reject.reason


def test_absolute_and_file_uris_inside_the_folder(tmp_path: Path, images: dict[str, str]) -> None:
    inside = tmp_path / "inputs" / "a.png"
    for uri in (str(inside), inside.as_uri()):
        request = accepted(tmp_path, mode="edit", input_images=uri)
        assert request.input_sha256 == (images["inputs/a.png"],)


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/a.png",
        "https://example.com/a.png",
        "data:image/png;base64,AAAA",
        "file://otherhost/a.png",
    ],
)
def test_remote_inputs_are_not_supported_yet(tmp_path: Path, uri: str) -> None:
    reject = rejected(tmp_path, mode="edit", input_images=uri)
    assert reject.column == "input_images"
    assert UNSUPPORTED_INPUT in reject.reason


def test_duplicate_ids(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.parquet",
        {
            "id": ["a", "b", "a", "c", "a", "b"],
            "prompt": ["x", "", "y", "z", "w", "v"],
        },
    )
    requests, rejects, _ = read_all(path, batch_size=2)
    assert [r.row_id for r in requests] == ["a", "c"]
    assert rejects == [
        Reject(1, "b", "prompt", "prompt is empty"),
        Reject(2, "a", "id", "duplicate id (first seen at row 0)"),
        Reject(4, "a", "id", "duplicate id (first seen at row 0)"),
        # the first "b" was refused for its prompt; a later "b" is still a duplicate
        Reject(5, "b", "id", "duplicate id (first seen at row 1)"),
    ]


@pytest.mark.parametrize(
    ("row_id", "reason"),
    [
        (None, "id is missing"),
        ("", "id is empty"),
        ("   ", "id is empty"),
        (
            "x" * (MAX_ID_CHARS + 1),
            f"id has {MAX_ID_CHARS + 1} characters; at most {MAX_ID_CHARS} are allowed",
        ),
        ("a\nb", "id contains control characters"),
        ("a\x00b", "id contains control characters"),
        ("tab\there", "id contains control characters"),
        ("del\x7f", "id contains control characters"),
    ],
)
def test_bad_id(tmp_path: Path, row_id: str | None, reason: str) -> None:
    reject = rejected(tmp_path, id=row_id)
    assert (reject.row_number, reject.column, reject.reason) == (0, "id", reason)


@pytest.mark.parametrize("column", ["prompt", "negative_prompt"])
@pytest.mark.parametrize("text", ["a cat\x00", "a \x1b[31mred\x1b[0m cat", "bell\x07", "c1\x85in"])
def test_control_characters_in_prompts_are_refused(tmp_path: Path, column: str, text: str) -> None:
    reject = rejected(tmp_path, **{column: text})
    assert (reject.column, reject.reason) == (
        column,
        f"{column} contains control characters (other than tab, newline)",
    )


def test_prompts_may_span_lines(tmp_path: Path) -> None:
    request = accepted(
        tmp_path, prompt="a cat\n\ton a mat\r\nat noon", negative_prompt="blur\nnoise"
    )
    assert request.prompt == "a cat\n\ton a mat\r\nat noon"


@pytest.mark.parametrize("row_id", ["x" * MAX_ID_CHARS, "sku 12/ä/🧋", "nbsp\u00a0ok", "zwj\u200d"])
def test_good_unusual_ids(tmp_path: Path, row_id: str) -> None:
    assert accepted(tmp_path, id=row_id).row_id == row_id


def test_id_binary_not_utf8(tmp_path: Path) -> None:
    reject = rejected(tmp_path, id=pa.array([b"\xff\xfe"], pa.binary()))
    assert reject == Reject(0, None, "id", "id is not valid UTF-8 text")


def test_generate_on_an_edit_only_model(tmp_path: Path) -> None:
    reject = rejected(tmp_path, model="qwen-image-edit-plus")
    assert reject.column == "mode"
    assert reject.reason.startswith("qwen-image-edit-plus only edits")


def test_edit_on_a_generate_only_model(tmp_path: Path, images: dict[str, str]) -> None:
    reject = rejected(tmp_path, model="qwen-image-max", mode="edit", input_images="inputs/a.png")
    assert reject.column == "mode"
    assert reject.reason.startswith("qwen-image-max cannot edit; edit models: ")
    assert "qwen-image-edit-plus" in reject.reason


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("watermark", "maybe", "watermark must be true or false, got 'maybe'"),
        ("prompt_extend", pa.array([2], pa.int32()), "prompt_extend must be 0 or 1, got 2"),
        ("tags", pa.array([["=v"]]), "tags has a tag with an empty key"),
        ("tags", "{not json", "tags is not valid JSON"),
        ("tags", '{"a": [1]}', "tags JSON tag values must be strings, numbers or booleans"),
        ("input_images", "[1, 2", "input_images is not a valid JSON array of strings"),
        ("prompt", pa.array([b"\xff"], pa.binary()), "prompt is not valid UTF-8 text"),
    ],
)
def test_bad_cells(tmp_path: Path, column: str, value: Any, reason: str) -> None:
    reject = rejected(tmp_path, **{column: value})
    assert (reject.column, reject.reason) == (column, reason)


def test_bad_rows_do_not_stop_good_ones(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.parquet",
        {
            "id": ["ok-1", "bad", "ok-2"],
            "prompt": ["x", "y", "z"],
            "n": [1, 99, None],
        },
    )
    requests, rejects, reader = read_all(path)
    assert [r.row_id for r in requests] == ["ok-1", "ok-2"]
    assert [(r.row_number, r.row_id, r.column) for r in rejects] == [(1, "bad", "n")]
    summary = reader.summary
    assert (summary.rows_read, summary.accepted, summary.rejected) == (3, 2, 1)


# --------------------------------------------------------------------------- inputs


def test_each_distinct_input_is_resolved_once(tmp_path: Path) -> None:
    calls: list[str] = []

    def resolve(uri: str) -> str:
        calls.append(uri)
        if uri == "gone.png":
            raise StorageError("input image not found: 'gone.png'")
        return hashlib.sha256(uri.encode()).hexdigest()

    path = write(
        tmp_path / "m.parquet",
        {
            "id": [f"r{i}" for i in range(6)],
            "prompt": ["x"] * 6,
            "mode": ["edit"] * 6,
            "input_images": [
                ["a.png"],
                ["a.png", "b.png"],
                ["b.png"],
                ["gone.png"],
                ["gone.png"],
                ["a.png"],
            ],
        },
    )
    requests, rejects, _ = read_all(path, resolve_input=resolve, batch_size=2)
    assert sorted(calls) == ["a.png", "b.png", "gone.png"]
    assert len(requests) == 4
    assert [(r.row_number, r.reason) for r in rejects] == [
        (3, "input image not found: 'gone.png'"),
        (4, "input image not found: 'gone.png'"),
    ]


def test_a_resolver_bug_is_not_a_reject(tmp_path: Path) -> None:
    def resolve(uri: str) -> str:
        raise RuntimeError("bug")

    path = write(
        tmp_path / "m.parquet",
        {"id": ["a"], "prompt": ["x"], "mode": ["edit"], "input_images": ["a.png"]},
    )
    with pytest.raises(RuntimeError, match="bug"):
        read_all(path, resolve_input=resolve)


def test_local_resolver_errors_are_permanent(tmp_path: Path) -> None:
    resolver = LocalInputResolver(tmp_path)
    with pytest.raises(PermanentError):
        resolver("missing.png")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(StorageError, match="cannot read input image"):
        resolver("folder.png")


# --------------------------------------------------------------------------- strict mode


def test_strict_mode_refuses_the_manifest(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.parquet",
        {
            "id": ["a", "b", "c"],
            "prompt": ["x", "", "z"],
            "n": [1, 1, 0],
        },
    )
    with pytest.raises(ManifestError) as info:
        read_all(path, strict=True)
    message = str(info.value)
    assert "refused (strict): 2 bad row(s)" in message
    assert "row 1 (id 'b'), column 'prompt': prompt is empty" in message
    assert "row 2 (id 'c'), column 'n': n must be at least 1, got 0" in message


def test_strict_mode_names_only_the_first_few(tmp_path: Path) -> None:
    path = write(tmp_path / "m.parquet", {"id": [str(i) for i in range(9)], "prompt": [""] * 9})
    with pytest.raises(ManifestError, match="and 4 more"):
        read_all(path, strict=True)


def test_strict_mode_on_a_good_manifest(tmp_path: Path) -> None:
    path = write(tmp_path / "m.parquet", {"id": ["a", "b"], "prompt": ["x", "y"]})
    requests, rejects, _ = read_all(path, strict=True)
    assert (len(requests), rejects) == (2, [])


# --------------------------------------------------------------------------- streaming


def test_batches_stream_and_give_the_same_result(tmp_path: Path) -> None:
    rows = 35
    path = write(
        tmp_path / "m.parquet",
        {
            "id": [f"r{i:02d}" for i in range(rows)],
            "prompt": [f"prompt {i}" if i % 7 else "" for i in range(rows)],
            "n": pa.array([1 + i % 3 for i in range(rows)], pa.int32()),
        },
        row_group_size=10,
    )
    assert pq.ParquetFile(path).metadata.num_row_groups == 4

    reader = read_manifest(path, table=TABLE, default_model=DEFAULT, batch_size=8)
    batches = list(reader)
    assert len(batches) >= 5
    assert [b.first_row for b in batches] == [
        sum(b.num_rows for b in batches[:i]) for i in range(len(batches))
    ]
    assert all(b.num_rows <= 8 for b in batches)
    assert reader.summary.batches == len(batches)
    assert reader.summary.rows_read == rows

    whole_requests, whole_rejects, _ = read_all(path)
    assert [r for b in batches for r in b.requests] == whole_requests
    assert [r for b in batches for r in b.rejects] == whole_rejects
    assert [r.row_number for r in whole_rejects] == [0, 7, 14, 21, 28]
    assert len(whole_requests) == 30


def test_an_empty_manifest(tmp_path: Path) -> None:
    table = pa.table({"id": pa.array([], pa.string()), "prompt": pa.array([], pa.string())})
    pq.write_table(table, tmp_path / "m.parquet")
    requests, rejects, reader = read_all(tmp_path / "m.parquet")
    assert (requests, rejects, reader.summary.rows_read) == ([], [], 0)


def test_reader_closes_early(tmp_path: Path) -> None:
    path = write(tmp_path / "m.parquet", {"id": ["a", "b", "c"], "prompt": ["x", "y", "z"]})
    with read_manifest(path, table=TABLE, default_model=DEFAULT, batch_size=1) as reader:
        first = next(reader)
    assert first.requests[0].row_id == "a"
    assert list(reader) == []


# --------------------------------------------------------------------------- manifest errors


@pytest.mark.parametrize("missing", ["id", "prompt"])
def test_missing_required_column(tmp_path: Path, missing: str) -> None:
    columns = {"id": ["a"], "prompt": ["x"], "mode": ["generate"]}
    del columns[missing]
    path = write(tmp_path / "m.parquet", columns)
    with pytest.raises(ManifestError, match=f"has no '{missing}' column; its columns: "):
        read_all(path)


@pytest.mark.parametrize(
    ("column", "value", "words"),
    [
        ("prompt", pa.array([5], pa.int64()), "column 'prompt' has type int64; expected a string"),
        ("n", pa.array([True]), "column 'n' has type bool; expected an integer column"),
        ("input_images", pa.array([[1]]), "column 'input_images' has type list<element: int64>"),
        ("tags", pa.array([3.5]), "column 'tags' has type double"),
        ("id", pa.array([1.0]), "column 'id' has type double"),
    ],
)
def test_unusable_column_type(tmp_path: Path, column: str, value: pa.Array, words: str) -> None:
    columns: dict[str, Any] = {"id": ["a"], "prompt": ["x"], column: value}
    with pytest.raises(ManifestError, match=re.escape(words)):
        read_all(write(tmp_path / "m.parquet", columns))


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    path.write_text("id,prompt\na,x\n")
    with pytest.raises(ManifestError, match="cannot read manifest"):
        read_all(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read manifest"):
        read_all(tmp_path / "nope.parquet")


def test_an_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no Parquet files"):
        read_all(tmp_path)


def test_unknown_default_model_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path / "m.parquet", {"id": ["a"], "prompt": ["x"]})
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        read_manifest(path, table=TABLE, default_model="nope")


# --------------------------------------------------------------------------- rejects file


def test_rejects_table(tmp_path: Path) -> None:
    rejects = [
        Reject(3, "a", "n", "n must be at least 1, got 0"),
        Reject(9, None, "id", "id is missing"),
    ]
    table = rejects_table(rejects)
    assert table.schema == REJECTS_SCHEMA
    assert table.to_pylist() == [
        {"row_number": 3, "id": "a", "column": "n", "reason": "n must be at least 1, got 0"},
        {"row_number": 9, "id": None, "column": "id", "reason": "id is missing"},
    ]
    pq.write_table(table, tmp_path / "rejects.parquet")
    assert pq.read_table(tmp_path / "rejects.parquet").num_rows == 2
    assert rejects_table([]).num_rows == 0
