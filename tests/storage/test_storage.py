"""Object stores: the same behaviour from a local folder and from S3 over real HTTP (moto).

S3 faults that moto cannot produce (501 for If-None-Match, 503, 409) are injected with a
botocore ``before-send`` hook on the test's own client: a seam, not a patch of our code.
"""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import sys
import textwrap
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from fixtures_s3 import FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY, seed_objects

from qwbatch.core.errors import (
    ConfigError,
    ObjectNotFoundError,
    QwBatchError,
    StorageError,
    StorageTransientError,
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

PNG_TYPE = "image/png"


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


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
    assert result.etag == _md5(data)
    assert store.get("images/ab/abc/0.png") == data
    assert store.exists("images/ab/abc/0.png")
    info = store.head("images/ab/abc/0.png")
    assert info is not None
    assert (info.size, info.etag, info.content_type) == (len(data), _md5(data), PNG_TYPE)


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
# Local store: atomicity, sidecars, temp files


def test_local_list_hides_sidecars_and_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a/0.png", b"x", metadata={"v": "1"})
    (tmp_path / "a" / f"{TEMP_PREFIX}deadbeef").write_bytes(b"left by a crash")

    assert (tmp_path / "a" / f".0.png{SIDECAR_SUFFIX}").exists()
    assert list(store.list("")) == ["a/0.png"]
    assert store.root_uri == tmp_path.as_uri()


def test_local_sidecar_that_no_longer_matches_is_ignored(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("k", b"old", content_type=PNG_TYPE, metadata={"v": "1"})
    replacement = tmp_path / "replacement"
    replacement.write_bytes(b"changed behind our back")
    replacement.replace(tmp_path / "k")

    info = store.head("k")
    assert info is not None
    assert dict(info.metadata) == {}  # unknown, rather than the old file's metadata
    assert info.etag == _md5(b"changed behind our back")
    assert info.content_type == "application/octet-stream"


def test_local_key_below_a_file_is_a_storage_error(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a", b"x")
    with pytest.raises(StorageError, match="local put"):
        store.put("a/b", b"y")
    store.put("c/d", b"x")
    with pytest.raises(StorageError, match="local put"):
        store.put("c", b"y", if_none_match=True)  # a folder is not "an existing object"
    assert store.get("a") == b"x"
    assert not store.exists("c")


_CHILD_PUT = textwrap.dedent(
    """
    import json, resource, signal, sys
    from qwbatch.core.errors import StorageError
    from qwbatch.storage.stores import LocalStore

    root, mode = sys.argv[1], sys.argv[2]
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
    if mode == "die":
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # the kernel kills us mid-write
    try:
        LocalStore(root).put("k", b"n" * (4 << 20))
    except StorageError as exc:
        print(json.dumps({"error": str(exc)}))
    """
)


def _put_in_child(root: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _CHILD_PUT, str(root), mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_local_write_killed_midway_leaves_old_object(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("k", b"old", metadata={"v": "1"})

    child = _put_in_child(tmp_path, "die")

    assert child.returncode == -signal.SIGXFSZ, child.stderr
    assert any(p.name.startswith(TEMP_PREFIX) for p in tmp_path.iterdir())  # it did die mid-way
    assert store.get("k") == b"old"
    info = store.head("k")
    assert info is not None
    assert dict(info.metadata) == {"v": "1"}
    assert list(store.list("")) == ["k"]


def test_local_failed_write_cleans_up_and_raises(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)

    child = _put_in_child(tmp_path, "raise")

    assert child.returncode == 0, child.stderr
    assert "local put of 'k' failed" in json.loads(child.stdout)["error"]
    assert not store.exists("k")
    assert [p.name for p in tmp_path.iterdir()] == []


# ---------------------------------------------------------------------------------------------
# S3: conditional puts, pagination, client config, error translation


SendHook = Callable[..., AWSResponse | None]


def _client(settings: Settings, session: boto3.session.Session, **config: Any) -> S3Client:
    """A client like production's, with ``config`` overrides (e.g. no retries)."""
    defaults: dict[str, Any] = {
        "s3": {"addressing_style": "path"},
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
    }
    return session.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        config=Config(**{**defaults, **config}),
    )


def _respond(status: int, code: str, message: str) -> AWSResponse:
    body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
    return AWSResponse("http://fake", status, {"Content-Type": "application/xml"}, _Raw(body))


class _Raw:
    """The minimal raw-response object botocore reads a body from."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


@pytest.fixture
def sent(s3_client: S3Client) -> list[dict[str, str]]:
    """Headers of every PutObject the ``s3_client`` sends."""
    headers: list[dict[str, str]] = []

    def record(request: Any, **_: Any) -> None:
        headers.append({k.lower(): _text(v) for k, v in request.headers.items()})

    s3_client.meta.events.register("before-send.s3.PutObject", record)
    return headers


def test_s3_conditional_put_uses_if_none_match(
    s3_client: S3Client, s3_bucket: str, sent: list[dict[str, str]]
) -> None:
    store = S3Store(s3_client, s3_bucket)
    assert store.put("k", b"1", if_none_match=True).created
    assert not store.put("k", b"2", if_none_match=True).created

    assert [h.get("if-none-match") for h in sent] == ["*", "*"]  # moto answered 412
    assert store.conditional_puts
    assert store.get("k") == b"1"


def test_s3_put_sends_no_crc_checksum_headers(
    s3_client: S3Client, s3_bucket: str, sent: list[dict[str, str]]
) -> None:
    S3Store(s3_client, s3_bucket).put("k", b"x" * 1000)
    names = set(sent[0])
    assert not {n for n in names if n.startswith("x-amz-checksum")}
    assert "x-amz-sdk-checksum-algorithm" not in names


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (501, "NotImplemented", "A header you provided implies functionality not implemented"),
        (400, "InvalidArgument", "If-None-Match is not supported"),
        (400, "NotImplemented", "conditional writes are not supported"),
    ],
)
def test_s3_falls_back_when_if_none_match_is_unsupported(
    s3_client: S3Client,
    s3_bucket: str,
    caplog: pytest.LogCaptureFixture,
    status: int,
    code: str,
    message: str,
) -> None:
    conditional_sends: list[str] = []

    def refuse_conditional(request: Any, **_: Any) -> AWSResponse | None:
        if "If-None-Match" in request.headers:
            conditional_sends.append(request.url)
            return _respond(status, code, message)
        return None

    s3_client.meta.events.register("before-send.s3.PutObject", refuse_conditional)
    store = S3Store(s3_client, s3_bucket)

    first = store.put("k", b"1", if_none_match=True)
    second = store.put("k", b"2", if_none_match=True)
    third = store.put("other", b"3", if_none_match=True)

    assert (first.created, second.created, third.created) == (True, False, True)
    assert len(conditional_sends) == 1  # the store remembered after the first refusal
    assert not store.conditional_puts
    assert store.get("k") == b"1"
    assert "does not implement conditional puts" in caplog.text


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (503, "SlowDown", StorageTransientError),
        (500, "InternalError", StorageTransientError),
        (409, "ConditionalRequestConflict", StorageTransientError),
        (403, "AccessDenied", StorageError),
        (400, "InvalidArgument", StorageError),
    ],
)
def test_s3_error_classes(
    s3_settings: Settings,
    boto_session: boto3.session.Session,
    s3_bucket: str,
    status: int,
    code: str,
    expected: type[QwBatchError],
) -> None:
    no_retries = {"mode": "standard", "total_max_attempts": 1}
    client = _client(s3_settings, boto_session, retries=no_retries)
    client.meta.events.register(
        "before-send.s3.PutObject", lambda **_: _respond(status, code, "injected")
    )
    store = S3Store(client, s3_bucket)

    with pytest.raises(expected) as raised:
        store.put("k", b"x", if_none_match=True)

    assert type(raised.value) is expected
    assert raised.value.code == code
    assert f"s3://{s3_bucket}/k" in str(raised.value)


def test_s3_list_paginates_past_1000_keys(s3_client: S3Client, s3_bucket: str) -> None:
    store = S3Store(s3_client, s3_bucket, "many")
    keys = [f"k/{i:05d}" for i in range(1003)]
    seed_objects(s3_bucket, [f"many/{key}" for key in keys[:-3]])  # 1000 HTTP puts take 10 s
    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(lambda key: store.put(key, b""), keys[-3:]))
    s3_client.put_object(Bucket=s3_bucket, Key="outside-the-prefix", Body=b"")
    pages: list[int] = []
    s3_client.meta.events.register(
        "after-call.s3.ListObjectsV2",
        lambda parsed, **_: pages.append(len(parsed.get("Contents", []))),
    )

    assert list(store.list("k/")) == keys
    assert pages == [1000, 3]


def test_s3_prefix_scopes_keys_and_uris(s3_client: S3Client, s3_bucket: str) -> None:
    store = S3Store(s3_client, s3_bucket, "/runs/r1/")
    store.put("0.png", b"x")
    s3_client.put_object(Bucket=s3_bucket, Key="runs/r10/0.png", Body=b"")

    assert store.root_uri == f"s3://{s3_bucket}/runs/r1"
    assert store.uri("0.png") == f"s3://{s3_bucket}/runs/r1/0.png"
    assert list(store.list("")) == ["0.png"]
    assert s3_client.head_object(Bucket=s3_bucket, Key="runs/r1/0.png")["ContentLength"] == 1


def test_make_s3_client_config(s3_client: S3Client, moto_server: str) -> None:
    config = s3_client.meta.config
    assert s3_client.meta.endpoint_url == moto_server
    assert config.s3 == {"addressing_style": "path"}
    assert config.retries == {"mode": "standard", "total_max_attempts": 5}
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"


def _failures(
    s3_settings: Settings, session: boto3.session.Session, s3_bucket: str
) -> Iterator[Exception]:
    """One of each S3 failure we translate, for the tests below."""
    missing = S3Store(_client(s3_settings, session), f"{s3_bucket}-missing")
    for call in (
        lambda: missing.put("k", b"x"),
        lambda: missing.put("k", b"x", if_none_match=True),
        lambda: missing.get("k"),
        lambda: list(missing.list("")),
    ):
        try:
            call()
        except StorageError as exc:
            yield exc
    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    unreachable = Settings(s3_endpoint_url=f"http://127.0.0.1:{closed_port}", s3_region="us-east-1")
    client = _client(unreachable, session, retries={"mode": "standard", "total_max_attempts": 1})
    try:
        S3Store(client, s3_bucket).put("k", b"x")
    except StorageTransientError as exc:
        yield exc


def test_s3_missing_bucket_and_unreachable_endpoint(
    s3_settings: Settings, boto_session: boto3.session.Session, s3_bucket: str
) -> None:
    errors = list(_failures(s3_settings, boto_session, s3_bucket))

    assert [type(e) for e in errors] == [StorageError] * 4 + [StorageTransientError]
    assert all("NoSuchBucket" in str(e) for e in errors[:4])
    assert all(f"{s3_bucket}-missing" in str(e) for e in errors[:4])
    assert "cannot reach http://127.0.0.1:" in str(errors[4])


def test_s3_errors_never_carry_credentials(
    s3_settings: Settings, boto_session: boto3.session.Session, s3_bucket: str
) -> None:
    errors = list(_failures(s3_settings, boto_session, s3_bucket))
    assert len(errors) == 5
    for error in errors:
        text = "".join(traceback.format_exception(error))  # the whole chain, causes included
        assert FAKE_ACCESS_KEY_ID not in text
        assert FAKE_SECRET_ACCESS_KEY not in text


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
