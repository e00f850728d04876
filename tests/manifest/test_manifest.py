"""The manifest reader: rows normalised, and real writers' flavours read alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from manifest_helpers import DEFAULT, accepted, read_all, write

from qwbatch.core.keys import SEED_MAX, key_of
from qwbatch.core.types import RenderRequest
from qwbatch.manifest import (
    MANIFEST_SCHEMA,
    Reject,
)
from qwbatch.manifest.columns import COERCE

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
