"""The S3 store over real HTTP (moto): conditional puts, pagination, client config, error
translation.

S3 faults that moto cannot produce (501 for If-None-Match, 503, 409) are injected with a
botocore ``before-send`` hook on the test's own client: a seam, not a patch of our code."""

from __future__ import annotations

import socket
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from fixtures_s3 import FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY, seed_objects

from qwbatch.core.errors import (
    QwBatchError,
    StorageError,
    StorageTransientError,
)
from qwbatch.core.settings import Settings
from qwbatch.storage.stores import (
    S3Store,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


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
