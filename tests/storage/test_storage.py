"""Object stores: the same behaviour from a local folder and from S3 over real HTTP (moto),
safe key parts, and stores opened by URI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from qwbatch.core.errors import (
    ConfigError,
    ObjectNotFoundError,
    StorageError,
)
from qwbatch.core.settings import Settings
from qwbatch.storage.stores import (
    SIDECAR_SUFFIX,
    TEMP_PREFIX,
    LocalStore,
    ObjectStore,
    S3Store,
    open_store,
    sanitize_key_part,
    validate_key,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
from store_helpers import PNG_TYPE, md5_hex


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The store under test: a local folder, or a prefix of a fresh bucket on moto."""
    if request.param == "local":
        return open_store(str(tmp_path / "store"), Settings())
    bucket = request.getfixturevalue("s3_bucket")
    settings = request.getfixturevalue("s3_settings")
    client = request.getfixturevalue("s3_client")
    return open_store(f"s3://{bucket}/runs/r1", settings, s3_client=client)


# ---------------------------------------------------------------------------------------------
# Behaviour shared by every store


def test_put_then_get_head_exists(store: ObjectStore) -> None:
    data = b"\x89PNG fake bytes"
    result = store.put("images/ab/abc/0.png", data, content_type=PNG_TYPE)

    assert result.created
    assert result.uri == store.uri("images/ab/abc/0.png")
    assert result.uri.startswith(store.root_uri + "/")
    assert result.etag == md5_hex(data)
    assert store.get("images/ab/abc/0.png") == data
    assert store.exists("images/ab/abc/0.png")
    info = store.head("images/ab/abc/0.png")
    assert info is not None
    assert (info.size, info.etag, info.content_type) == (len(data), md5_hex(data), PNG_TYPE)


def test_missing_key(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError):
        store.get("nope/0.png")
    assert store.head("nope/0.png") is None
    assert not store.exists("nope/0.png")


def test_default_content_type_and_empty_object(store: ObjectStore) -> None:
    store.put("empty", b"")
    info = store.head("empty")
    assert info is not None
    assert (info.size, info.content_type) == (0, "application/octet-stream")
    assert dict(info.metadata) == {}
    assert store.get("empty") == b""


def test_metadata_round_trips_exactly(store: ObjectStore) -> None:
    metadata = {
        "request-key": "ab" * 32,
        "model": "qwen-image-2.0",
        "seed": "42",
        "prompt": "一只猫 — café au lait",  # non-ASCII: RFC 2047 on the wire to S3
        "padded": "  spaces kept  ",
        "looks-encoded": "=?UTF-8?B?Zm9v?=",
        "empty": "",
        "newline": "a\nb",
    }
    store.put("meta/0.png", b"x", content_type=PNG_TYPE, metadata=metadata)
    info = store.head("meta/0.png")
    assert info is not None
    assert dict(info.metadata) == metadata


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ({"Request-Key": "x"}, "lower-case"),
        ({"request_key": "x"}, "request-key"),
        ({"": "x"}, "metadata key"),
        ({"big": "x" * 3000}, "limit"),
    ],
)
def test_bad_metadata_refused_before_writing(
    store: ObjectStore, metadata: dict[str, str], reason: str
) -> None:
    with pytest.raises(StorageError, match=reason):
        store.put("k", b"x", metadata=metadata)
    assert not store.exists("k")


def test_put_overwrites_by_default(store: ObjectStore) -> None:
    store.put("k", b"old", metadata={"v": "1"})
    result = store.put("k", b"new", metadata={"v": "2"})
    assert result.created
    assert store.get("k") == b"new"
    info = store.head("k")
    assert info is not None
    assert dict(info.metadata) == {"v": "2"}


def test_if_none_match_never_replaces(store: ObjectStore) -> None:
    first = store.put("k", b"first", metadata={"v": "1"}, if_none_match=True)
    second = store.put("k", b"second", metadata={"v": "2"}, if_none_match=True)

    assert (first.created, second.created) == (True, False)
    assert second.uri == first.uri
    assert second.etag is None
    assert store.get("k") == b"first"
    info = store.head("k")
    assert info is not None
    assert dict(info.metadata) == {"v": "1"}


def test_list_is_lazy_sorted_and_relative(store: ObjectStore) -> None:
    keys = ["images/ab/1.png", "images/ab/0.png", "images/b/0.png", "a-b", "a/b", "a0", "z"]
    for key in keys:
        store.put(key, key.encode())

    listing = store.list("")
    assert iter(listing) is listing  # an iterator, consumed page by page
    assert list(listing) == sorted(keys)  # byte order, as S3 lists: '-' < '/' < '0'


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("images/", ["images/ab/0.png", "images/ab/1.png", "images/b/0.png"]),
        ("images/a", ["images/ab/0.png", "images/ab/1.png"]),  # a string prefix, not a folder
        ("images/ab/1", ["images/ab/1.png"]),
        ("images", ["images/ab/0.png", "images/ab/1.png", "images/b/0.png"]),
        ("imagesX", []),
        ("nothing/here/", []),
    ],
)
def test_list_prefix(store: ObjectStore, prefix: str, expected: list[str]) -> None:
    for key in ["images/ab/0.png", "images/ab/1.png", "images/b/0.png", "other/0.png"]:
        store.put(key, b"x")
    assert list(store.list(prefix)) == expected


def test_delete(store: ObjectStore) -> None:
    store.put("d/0", b"x", metadata={"v": "1"})
    store.delete("d/0")
    assert not store.exists("d/0")
    assert list(store.list("")) == []
    store.delete("d/0")  # deleting a missing key is fine


BAD_KEYS = [
    "",
    "/abs/path",
    "../escape",
    "a/../../escape",
    "a/./b",
    ".",
    "a//b",
    "a/",
    "a\\..\\b",
    "nul\x00byte",
    "new\nline",
    f"x/{TEMP_PREFIX}1234",
    f"x/0.png{SIDECAR_SUFFIX}",
    "x" * 300,
    "/".join(["abcdefgh"] * 120),  # over 1024 bytes
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_escaping_keys_refused_everywhere(store: ObjectStore, key: str) -> None:
    calls: list[Callable[[], object]] = [
        lambda: store.put(key, b"x"),
        lambda: store.put(key, b"x", if_none_match=True),
        lambda: store.get(key),
        lambda: store.head(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.uri(key),
    ]
    for call in calls:
        with pytest.raises(StorageError, match="invalid key"):
            call()
    assert list(store.list("")) == []


@pytest.mark.parametrize("prefix", ["../", "/abs", "a//", "a/../"])
def test_escaping_list_prefix_refused(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(StorageError, match="invalid key"):
        list(store.list(prefix))


def test_unicode_and_odd_but_safe_keys(store: ObjectStore) -> None:
    keys = ["图片/猫.png", "with space/x y.png", "a..b", ".hidden", "-dash", "q?x=1&y#z"]
    for key in keys:
        store.put(validate_key(key), key.encode())
    assert sorted(store.list("")) == sorted(keys)
    for key in keys:
        assert store.get(key) == key.encode()


# ---------------------------------------------------------------------------------------------
# sanitize_key_part


@pytest.mark.parametrize(
    "text",
    ["../../x", "a/b", "a?b", "a b", "猫", "café", ".", "..", "", "..hidden", "\x00", "x" * 500],
)
def test_sanitize_key_part_gives_one_safe_segment(text: str) -> None:
    part = sanitize_key_part(text)
    validate_key(part)
    assert "/" not in part
    assert not part.startswith(".")
    assert 0 < len(part) <= 96
    assert part == sanitize_key_part(text)  # deterministic


@pytest.mark.parametrize("text", ["row-17", "ABC_def.9", "a" * 96])
def test_sanitize_key_part_keeps_safe_ids(text: str) -> None:
    assert sanitize_key_part(text) == text


def test_sanitize_key_part_keeps_distinct_ids_distinct() -> None:
    long_a, long_b = "p" * 200 + "a", "p" * 200 + "b"
    texts = ["a/b", "a?b", "a_b", "a b", ".", "..", "_", "", "x" * 97, long_a, long_b]
    texts += ["cafe", "café", "猫", "犬"]
    texts.append(sanitize_key_part("a/b"))  # an id that merely looks like a hashed one
    parts = [sanitize_key_part(t) for t in texts]
    assert len(set(parts)) == len(texts)


def test_sanitize_key_part_is_readable() -> None:
    assert sanitize_key_part("../../x").startswith("___.._x-h")
    assert sanitize_key_part("café").startswith("cafe-h")
    assert len(sanitize_key_part("y" * 500, max_length=40)) == 40


# ---------------------------------------------------------------------------------------------
# open_store


def test_open_store_by_uri(tmp_path: Path, s3_settings: Settings, s3_client: S3Client) -> None:
    assert isinstance(open_store(str(tmp_path), s3_settings), LocalStore)
    local = open_store((tmp_path / "a b").as_uri(), s3_settings)
    assert isinstance(local, LocalStore)
    assert local.root == tmp_path / "a b"
    s3 = open_store("s3://bucket/p/q/", s3_settings, s3_client=s3_client)
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix, s3.root_uri) == ("bucket", "p/q", "s3://bucket/p/q")
    assert open_store("s3://bucket", s3_settings).root_uri == "s3://bucket"


@pytest.mark.parametrize(
    "uri",
    [
        "gs://bucket/x",
        "https://example.invalid/x",
        "s3://",
        "s3://bucket/x?versionId=1",
        "s3://AKIDEXAMPLE:topsecret@bucket/x",
        "file://otherhost/x",
        "s3://bucket/../x",
    ],
)
def test_open_store_refuses(uri: str) -> None:
    with pytest.raises((ConfigError, StorageError)) as raised:
        open_store(uri, Settings())
    assert "topsecret" not in str(raised.value)
