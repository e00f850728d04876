"""An S3-compatible bucket as an object store (:class:`S3Store`), and the boto3 client for it.

boto3 clients are thread-safe, so one client serves every worker thread. Credentials come
from the standard AWS chain; this module never reads them, and they never reach a message.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from botocore import exceptions as bx
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from qwbatch.core.errors import (
    ConfigError,
    ObjectNotFoundError,
    StorageError,
    StorageTransientError,
)
from qwbatch.storage.base import (
    DEFAULT_CONTENT_TYPE,
    ObjectInfo,
    PutResult,
    check_content_type,
    check_metadata,
    decode_meta_value,
    encode_meta_value,
    validate_key,
    validate_prefix,
)

if TYPE_CHECKING:
    import boto3
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import PutObjectOutputTypeDef

    from qwbatch.core.settings import Settings

log = logging.getLogger(__name__)


def s3_client_config(settings: Settings) -> Config:
    """The botocore ``Config`` for S3-compatible stores.

    Checksums only when an operation requires them: recent botocore sends CRC checksum
    headers by default, which MinIO, OSS and R2 versions reject. Standard retries (5 attempts)
    cover throttling and 5xx inside one call (so an engine retry on StorageTransientError
    multiplies them). Timeouts are in seconds.
    """
    return Config(
        region_name=settings.s3_region,
        s3={"addressing_style": settings.s3_addressing_style},
        retries={"mode": "standard", "total_max_attempts": 5},  # the first call included
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.download_timeout_s,
        # The engine may run one store call per worker thread (asyncio.to_thread's pool).
        max_pool_connections=32,
    )


def make_s3_client(settings: Settings, *, session: boto3.session.Session | None = None) -> S3Client:
    """A boto3 S3 client for ``settings``; credentials come from the standard AWS chain.

    Each call builds a private ``session`` unless given one (boto3's default session is not
    thread-safe); passing one shared session saves reloading the S3 service model (~0.3 s).
    """
    # boto3 is imported when a client is made: importing it (s3transfer, its docs) costs
    # every command ~0.25 s, most of which never touch S3.
    import boto3

    session = session or boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        config=s3_client_config(settings),
    )


# Error codes (HTTP 4xx/5xx bodies) that mean "try again later".
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "RequestLimitExceeded",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "ConditionalRequestConflict",  # 409: a racing conditional write; AWS says retry
        "OperationAborted",
    }
)
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_UNSUPPORTED_CODES = frozenset({"NotImplemented", "NotSupported", "UnsupportedOperation"})
_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA)[A-Z0-9]{12,}\b")


class S3Store:
    """Objects in an S3-compatible bucket under an optional key prefix.

    ``client`` is a boto3 S3 client (see ``make_s3_client``); tests pass one aimed at a local
    server. Conditional puts send ``If-None-Match: *``; a store that answers that it does not
    implement it (501 or a ``NotImplemented``-style code) is remembered, and from then on this
    store checks with ``head`` before a plain put, which is not race-safe. Stores that
    silently ignore the header (some older S3-compatible services) cannot be detected.
    """

    def __init__(
        self, client: S3Client, bucket: str, prefix: str = "", *, list_page_size: int = 1000
    ) -> None:
        if not bucket or "/" in bucket:
            raise ConfigError(f"invalid bucket name {bucket!r}")
        prefix = prefix.strip("/")
        self.client = client
        self.bucket = bucket
        self.prefix = validate_key(prefix) if prefix else ""
        self.list_page_size = list_page_size
        self.root_uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        #: False once the store said it does not implement If-None-Match.
        self.conditional_puts = True

    def __repr__(self) -> str:
        return f"S3Store({self.root_uri!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as what opens the same store in another process (a large manifest's
        second planning process): a new client aimed where this one is (endpoint, region,
        configuration). Credentials come from the AWS chain there, never from the pickle."""
        meta = self.client.meta
        where = (meta.endpoint_url, meta.region_name, meta.config)
        return (_reopen_s3, (where, self.bucket, self.prefix, self.list_page_size))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full_key(key)}"

    def put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        metadata: Mapping[str, str] | None = None,
        if_none_match: bool = False,
        durable: bool = True,  # every S3 put is durable once answered
    ) -> PutResult:
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._full_key(key),
            "Body": data,
            "ContentType": check_content_type(content_type),
            "Metadata": {k: encode_meta_value(v) for k, v in check_metadata(metadata).items()},
        }
        if not if_none_match:
            response: PutObjectOutputTypeDef | None = self._put(key, args)
        elif self.conditional_puts:
            response = self._put_if_absent(key, args)
        else:
            response = None if self.exists(key) else self._put(key, args)
        if response is None:
            return PutResult(uri=self.uri(key), created=False, etag=None)
        return PutResult(uri=self.uri(key), created=True, etag=_etag(response.get("ETag")))

    def _put(self, key: str, args: dict[str, Any]) -> PutObjectOutputTypeDef:
        with self._errors("put", key):
            return self.client.put_object(**args)

    def _put_if_absent(self, key: str, args: dict[str, Any]) -> PutObjectOutputTypeDef | None:
        """A conditional put; None when the key already exists."""
        with self._errors("put", key):
            try:
                return self.client.put_object(**args, IfNoneMatch="*")
            except ClientError as exc:
                code, status, _ = _error_fields(exc)
                if code == "PreconditionFailed" or status == 412:
                    return None
                if not _says_unsupported(exc):
                    raise
        log.warning(
            "%s does not implement conditional puts (HTTP %s %s); falling back to "
            "head-then-put, which is not race-safe",
            self.root_uri,
            status,
            code,
        )
        self.conditional_puts = False
        return None if self.exists(key) else self._put(key, args)

    def get(self, key: str) -> bytes:
        with self._errors("get", key):
            response = self.client.get_object(Bucket=self.bucket, Key=self._full_key(key))
            return response["Body"].read()

    def get_range(self, key: str, start: int, length: int, *, if_match: str | None = None) -> bytes:
        """``length`` bytes of the object from byte ``start`` (fewer at its end).

        With ``if_match`` (an etag, no quotes) the read fails with StorageError when the
        object has been replaced since that etag was seen, so a reader of several ranges
        never mixes two versions of an object.
        """
        if start < 0 or length < 1:
            raise ValueError(f"bad range: start {start}, length {length}")
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._full_key(key),
            "Range": f"bytes={start}-{start + length - 1}",
        }
        if if_match is not None:
            args["IfMatch"] = f'"{if_match}"'
        with self._errors("get", key):
            try:
                return self.client.get_object(**args)["Body"].read()
            except ClientError as exc:
                code, status, _ = _error_fields(exc)
                if code == "PreconditionFailed" or status == 412:
                    raise StorageError(
                        f"S3 get {self.uri(key)} failed: the object changed while it was "
                        "being read (its etag no longer matches)",
                        code="PreconditionFailed",
                    ) from exc
                raise

    def head(self, key: str) -> ObjectInfo | None:
        """The object's info; None when missing.

        S3 answers a HEAD on a missing *bucket* with a bare 404 as well, so a missing bucket
        also reads as None here; ``put``, ``get`` and ``list`` report it as StorageError.
        """
        try:
            with self._errors("head", key):
                response = self.client.head_object(Bucket=self.bucket, Key=self._full_key(key))
        except ObjectNotFoundError:
            return None
        return ObjectInfo(
            size=response["ContentLength"],
            etag=_etag(response.get("ETag")) or "",
            content_type=response.get("ContentType") or DEFAULT_CONTENT_TYPE,
            metadata={k: decode_meta_value(v) for k, v in response.get("Metadata", {}).items()},
        )

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def list(self, prefix: str = "") -> Iterator[str]:
        validate_prefix(prefix)
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[str]:
        root = f"{self.prefix}/" if self.prefix else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket,
            Prefix=root + prefix,
            PaginationConfig={"PageSize": self.list_page_size},
        )
        with self._errors("list", f"{self.root_uri}/{prefix}"):
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"][len(root) :]

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=self._full_key(key))

    def _full_key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextlib.contextmanager
    def _errors(self, op: str, key_or_uri: str) -> Iterator[None]:
        """Translate botocore's exceptions during ``op`` on a key (or an s3:// URI) into ours."""
        uri = key_or_uri if key_or_uri.startswith("s3://") else self.uri(key_or_uri)
        try:
            yield
        except ClientError as exc:
            raise _translate_client_error(op, uri, exc) from exc
        except BotoCoreError as exc:
            endpoint = _safe_endpoint(self.client.meta.endpoint_url)
            raise _translate_botocore_error(op, uri, exc, endpoint) from exc


def _reopen_s3(where: tuple[str, str, Config], bucket: str, prefix: str, page: int) -> S3Store:
    import boto3  # see make_s3_client

    endpoint_url, region, config = where
    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name=region, config=config
    )
    return S3Store(client, bucket, prefix, list_page_size=page)


def _etag(value: str | None) -> str | None:
    return value.strip('"') if value else None


def _error_fields(exc: ClientError) -> tuple[str, int | None, str]:
    """(error code, HTTP status, message) of a botocore ClientError."""
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(error.get("Code", "")), status, str(error.get("Message", ""))


def _says_unsupported(exc: ClientError) -> bool:
    """Whether the store refused ``If-None-Match`` as a feature it lacks."""
    code, status, message = _error_fields(exc)
    if status == 501 or code in _UNSUPPORTED_CODES:
        return True
    return status == 400 and "if-none-match" in message.lower()


def _translate_client_error(
    op: str, uri: str, exc: ClientError
) -> StorageError | StorageTransientError:
    code, status, message = _error_fields(exc)
    text = f"S3 {op} {uri} failed: {code or 'error'} (HTTP {status})"
    if message:
        text += ": " + _ACCESS_KEY_ID.sub("<redacted>", message)[:300]
    if code in ("NoSuchKey", "404", "NotFound") and op in ("get", "head"):
        return ObjectNotFoundError(text)
    if code in _TRANSIENT_CODES or status in _TRANSIENT_STATUS:
        return StorageTransientError(text, code=code or "StorageTransient")
    return StorageError(text, code=code or "StorageError")


def _translate_botocore_error(
    op: str, uri: str, exc: BotoCoreError, endpoint: str
) -> StorageError | StorageTransientError:
    name = type(exc).__name__
    if isinstance(exc, bx.SSLError):
        return StorageError(f"S3 {op} {uri} failed: TLS error talking to {endpoint} ({name})")
    if isinstance(exc, bx.ConnectionError | bx.HTTPClientError | bx.IncompleteReadError):
        return StorageTransientError(f"S3 {op} {uri} failed: cannot reach {endpoint} ({name})")
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return StorageError(f"S3 {op} {uri} failed: no usable credentials in the AWS chain")
    return StorageError(f"S3 {op} {uri} failed: {name}")


def _safe_endpoint(url: str) -> str:
    """The endpoint as scheme://host:port, without any user info or path."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
