"""The manifest reader's refusals: every rejection reason, input resolution, strict mode."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from manifest_helpers import accepted, read_all, rejected, write
from support import TABLE

from qwbatch.core.errors import ManifestError, PermanentError, StorageError
from qwbatch.core.keys import SEED_MAX
from qwbatch.core.model_table import ModelTable
from qwbatch.manifest import (
    MAX_ID_CHARS,
    UNSUPPORTED_INPUT,
    LocalInputResolver,
    Reject,
)

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
