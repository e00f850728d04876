"""Object stores: an S3-compatible bucket (boto3) or a local directory, behind one protocol.

Every store speaks in *keys*: relative, ``/``-separated strings such as
``images/ab/abcdef…/0.png``. A key may not start with ``/``, hold ``.``/``..`` or empty
segments, backslashes or control characters, so no key can escape the store's root.
``sanitize_key_part`` turns any user string (a manifest row id) into one safe segment.

The stores are synchronous; the engine calls them through ``asyncio.to_thread`` (boto3
clients are thread-safe). Failures are translated at this boundary::

    StorageTransientError   throttling, 5xx, timeouts, dropped connections: retry later
    StorageError            access denied, no such bucket, bad key, full disk: record it
    └── ObjectNotFoundError ``get`` of a key that does not exist

Messages name the operation, the object's URI and the store's error code; they never carry
credentials (we never read them: boto3 takes them from the standard AWS chain).

Example::

    store = open_store("s3://assets/qwbatch", settings)
    result = store.put("images/ab/ab12/0.png", png, content_type="image/png",
                       metadata={"request-key": "ab12"}, if_none_match=True)
    store.head("images/ab/ab12/0.png").metadata  # {"request-key": "ab12"}
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlsplit

import boto3
from botocore import exceptions as bx
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from qwbatch.core.errors import (
    ConfigError,
    ObjectNotFoundError,
    StorageError,
    StorageTransientError,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import PutObjectOutputTypeDef

    from qwbatch.core.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_CONTENT_TYPE = "application/octet-stream"

#: Local temp files start with this; keys may not use it, so ``list`` can hide them.
TEMP_PREFIX = ".qwtmp-"
#: Local metadata sidecars end with this; keys may not use it, so ``list`` can hide them.
#: A sidecar's name also starts with a dot, so readers of a folder of Parquet parts
#: (pyarrow, DuckDB, polars) skip it as a hidden file.
SIDECAR_SUFFIX = ".qwmeta.json"

MAX_KEY_BYTES = 1024  # S3's limit on a whole key (UTF-8 bytes)
MAX_SEGMENT_BYTES = 255 - 1 - len(SIDECAR_SUFFIX)  # NAME_MAX, leaving room for the sidecar
MAX_METADATA_BYTES = 2048  # S3's limit on user metadata (keys + encoded values, UTF-8 bytes)


@dataclass(frozen=True, slots=True)
class PutResult:
    """What a ``put`` did.

    ``created`` is False only for ``if_none_match=True`` when the key already existed (the
    stored object was left untouched); ``etag`` is then None. On S3 a conditional put whose
    first response was lost and which botocore retried also reads as False: an object is at
    the key either way, which is what content-addressed keys need.
    """

    uri: str
    created: bool
    etag: str | None


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What ``head`` knows of a stored object. ``size`` is in bytes; ``etag`` has no quotes."""

    size: int
    etag: str
    content_type: str
    metadata: Mapping[str, str] = field(default_factory=dict)


class ObjectStore(Protocol):
    """A flat namespace of byte objects under one root URI."""

    @property
    def root_uri(self) -> str:
        """``s3://bucket/prefix`` or ``file:///abs/dir``."""
        ...

    def uri(self, key: str) -> str:
        """The full URI of ``key``."""
        ...

    def put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        metadata: Mapping[str, str] | None = None,
        if_none_match: bool = False,
        durable: bool = True,
    ) -> PutResult:
        """Store ``data`` at ``key``; with ``if_none_match`` never replace an existing object.

        ``durable=False`` is for objects that can be made again (thumbnails): a store may
        then skip what only guards against a power failure or an OS crash (a folder's
        fsyncs). A process crash loses nothing either way. S3 is durable on every put.
        """
        ...

    def get(self, key: str) -> bytes:
        """The object's bytes; ObjectNotFoundError when there is none."""
        ...

    def head(self, key: str) -> ObjectInfo | None:
        """The object's size, etag, content type and metadata; None when there is none."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object is stored at ``key``."""
        ...

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with ``prefix`` (a string prefix, not a folder), in sorted order."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object at ``key``; deleting a missing key is not an error."""
        ...


# --------------------------------------------------------------------------------------------
# Keys


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a safe relative key, else raise StorageError.

    Refused: empty keys, a leading ``/``, empty, ``.`` or ``..`` segments, backslashes,
    control characters, names reserved for local temp files and sidecars, segments over
    243 UTF-8 bytes and keys over 1024 UTF-8 bytes. The same rules hold for every store, so a
    key that works on a laptop works in a bucket.
    """
    if not isinstance(key, str) or not key:
        raise StorageError(f"invalid key {key!r}: empty")
    for segment in key.split("/"):
        problem = _segment_problem(segment)
        if problem:
            raise StorageError(f"invalid key {key!r}: {problem}")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise StorageError(f"invalid key {key[:40]!r}…: longer than {MAX_KEY_BYTES} bytes")
    return key


def _validate_prefix(prefix: str) -> str:
    """A ``list`` prefix: empty, or a key, or a key followed by ``/``."""
    if prefix:
        validate_key(prefix.removesuffix("/"))
    return prefix


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _segment_problem(segment: str) -> str | None:
    if segment in ("", ".", ".."):
        return f"segment {segment!r} is not allowed (empty, '.', '..' or a leading '/')"
    if "\\" in segment:
        return "backslashes are not allowed"
    if _CONTROL.search(segment):
        return "control characters are not allowed"
    if segment.startswith(TEMP_PREFIX) or segment.endswith(SIDECAR_SUFFIX):
        return f"names starting {TEMP_PREFIX!r} or ending {SIDECAR_SUFFIX!r} are reserved"
    if len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
        return f"a segment is longer than {MAX_SEGMENT_BYTES} bytes"
    return None


_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+")
_HASHED_TAIL = re.compile(r"-h[0-9a-f]{12}\Z")
_HASH_TAIL_LEN = len("-h") + 12


def sanitize_key_part(text: str, *, max_length: int = 96) -> str:
    """Turn any string into one safe key segment of at most ``max_length`` characters.

    Letters are folded to ASCII where Unicode allows (``é`` → ``e``), other runs of
    characters outside ``[A-Za-z0-9._-]`` become ``_`` and leading dots become ``_``. A string
    that had to change, or was too long, gets ``-h`` and 12 hex digits of its SHA-256, so
    distinct inputs give distinct outputs (``a/b`` and ``a?b`` do not collide, nor does an
    input that merely looks hashed)::

        sanitize_key_part("row-17")   == "row-17"
        sanitize_key_part("../../x")  == "______x-h…"   (12 hex digits)
    """
    if max_length < _HASH_TAIL_LEN + 1:
        raise ValueError(f"max_length must be at least {_HASH_TAIL_LEN + 1}")
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    safe = _UNSAFE_RUN.sub("_", folded)
    safe = "_" * (len(safe) - len(safe.lstrip("."))) + safe.lstrip(".")
    if safe and safe == text and len(safe) <= max_length and not _HASHED_TAIL.search(safe):
        return safe
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    base = safe[: max_length - _HASH_TAIL_LEN] or "_"
    return f"{base}-h{digest}"


# --------------------------------------------------------------------------------------------
# Metadata: S3 user metadata rules, applied to every store

_META_KEY = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")
_PLAIN_VALUE = re.compile(r"[!-~](?:[ -~]*[!-~])?")
_ENCODED_VALUE = re.compile(r"=\?UTF-8\?B\?([A-Za-z0-9+/=]*)\?=", re.IGNORECASE)
_CONTENT_TYPE = re.compile(r"[!-~][ -~]{0,254}")


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Validate user metadata; return a plain copy.

    Keys are lower-case ASCII letters, digits and ``-`` (S3 lower-cases keys, and proxies
    such as nginx drop headers with ``_``). Values are any strings: values that are not plain
    printable ASCII travel RFC 2047 encoded to S3 (as S3 itself does) and come back decoded.
    Keys plus encoded values may total at most 2048 bytes, S3's limit.
    """
    checked = dict(metadata or {})
    for name, value in checked.items():
        if not isinstance(name, str) or not _META_KEY.fullmatch(name):
            raise StorageError(
                f"invalid metadata key {name!r}: use lower-case a-z, 0-9 and '-' "
                "(for example 'request-key', not 'request_key')"
            )
        if not isinstance(value, str):
            raise StorageError(f"metadata {name!r} must be a string, not {type(value).__name__}")
    size = metadata_size(checked)
    if size > MAX_METADATA_BYTES:
        raise StorageError(f"metadata is {size} bytes; the limit is {MAX_METADATA_BYTES}")
    return checked


def metadata_size(metadata: Mapping[str, str]) -> int:
    """Bytes ``metadata`` takes against S3's 2048-byte limit (keys plus encoded values)."""
    return sum(len(k) + len(_encode_meta_value(v)) for k, v in metadata.items())


def _encode_meta_value(value: str) -> str:
    """Plain printable ASCII as is; anything else as RFC 2047 ``=?UTF-8?B?…?=``."""
    if _PLAIN_VALUE.fullmatch(value) and not value.startswith("=?"):
        return value
    encoded = base64.b64encode(value.encode("utf-8", "surrogatepass")).decode("ascii")
    return f"=?UTF-8?B?{encoded}?="


def _decode_meta_value(value: str) -> str:
    match = _ENCODED_VALUE.fullmatch(value)
    if not match:
        return value
    try:
        return base64.b64decode(match.group(1), validate=True).decode("utf-8", "surrogatepass")
    except (binascii.Error, UnicodeDecodeError):
        return value  # not ours; hand it back as the store gave it


def _check_content_type(content_type: str) -> str:
    if not _CONTENT_TYPE.fullmatch(content_type):
        raise StorageError(f"invalid content type {content_type[:60]!r}: printable ASCII only")
    return content_type


def _md5_hex(data: bytes) -> str:
    """S3's etag of a single-part upload: a checksum, not a security measure."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# --------------------------------------------------------------------------------------------
# Local directory


class LocalStore:
    """Objects as plain files under ``root``, metadata in a hidden ``.<file>.qwmeta.json``.

    Writes are atomic: the bytes go to a temp file in the target's directory, are fsynced,
    then renamed over (or, with ``if_none_match``, hard-linked to) the final name, and the
    directory is fsynced, so a reader or a crash never sees half an object. The data file is
    the commit point; its sidecar is written just after (not fsynced) and records the data
    file's inode, size and mtime, so a sidecar that does not describe the current file (a
    crash, a power failure or a racing writer in between) is ignored and ``head`` reports
    empty metadata rather than wrong metadata. ``durable=False`` skips the fsyncs: the object
    is still whole or absent after a process crash, but may be lost to a power failure.

    A key and a key below it (``a`` and ``a/b``) cannot both exist here, unlike in S3.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root_uri = self.root.as_uri()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        metadata: Mapping[str, str] | None = None,
        if_none_match: bool = False,
        durable: bool = True,
    ) -> PutResult:
        path = self._path(key)
        record: dict[str, Any] = {
            "content_type": _check_content_type(content_type),
            "metadata": _check_metadata(metadata),
            "etag": _md5_hex(data),
        }
        with _local_errors("put", key):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp, stat = _write_temp(path.parent, data, fsync=durable)
            try:
                if not _commit(tmp, path, replace=not if_none_match):
                    return PutResult(uri=path.as_uri(), created=False, etag=None)
            finally:
                tmp.unlink(missing_ok=True)
            record.update(_identity(stat))
            # The sidecar is not fsynced: one lost to a power failure no longer matches its
            # data file's identity, so head reports no metadata, and the engine verifies the
            # image and writes its metadata again (see Engine._restore_metadata).
            sidecar_tmp, _ = _write_temp(path.parent, json.dumps(record).encode(), fsync=False)
            os.replace(sidecar_tmp, _sidecar(path))
            if durable:
                _fsync_dir(path.parent)
        return PutResult(uri=path.as_uri(), created=True, etag=record["etag"])

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFoundError(f"no object at {path.as_uri()}") from exc
        except OSError as exc:
            raise StorageError(f"local get {path.as_uri()} failed: {exc.strerror}") from exc

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            stat = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StorageError(f"local head {path.as_uri()} failed: {exc.strerror}") from exc
        if not path.is_file():
            return None
        record = _read_sidecar(path)
        if any(record.get(k) != v for k, v in _identity(stat).items()):
            # No sidecar, or one describing an earlier file: compute what we honestly can.
            with _local_errors("head", key):
                etag = _md5_hex(path.read_bytes())
            return ObjectInfo(size=stat.st_size, etag=etag, content_type=DEFAULT_CONTENT_TYPE)
        return ObjectInfo(
            size=stat.st_size,
            etag=str(record["etag"]),
            content_type=str(record["content_type"]),
            metadata=dict(record["metadata"]),
        )

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> Iterator[str]:
        _validate_prefix(prefix)
        folder = prefix.rpartition("/")[0]
        start = self.root / folder if folder else self.root
        return _walk(start, f"{folder}/" if folder else "", prefix)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with _local_errors("delete", key):
            # Sidecar first: a crash in between leaves a file with unknown metadata, never
            # a sidecar that a later file with a recycled inode could inherit.
            _sidecar(path).unlink(missing_ok=True)
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                path.unlink()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))


def _sidecar(path: Path) -> Path:
    return path.with_name(f".{path.name}{SIDECAR_SUFFIX}")


def _identity(stat: os.stat_result) -> dict[str, int]:
    """What ties a sidecar to one version of its data file."""
    return {"inode": stat.st_ino, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _write_temp(folder: Path, data: bytes, *, fsync: bool) -> tuple[Path, os.stat_result]:
    """Write ``data`` to a new temp file in ``folder`` (fsynced if asked); its path and stat."""
    tmp = folder / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
            stat = os.fstat(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, stat


def _commit(tmp: Path, path: Path, *, replace: bool) -> bool:
    """Move ``tmp`` to ``path``; without ``replace`` only if ``path`` is free. True if done."""
    if replace:
        os.replace(tmp, path)
        return True
    try:
        os.link(tmp, path)  # atomic and never clobbers, unlike rename
    except FileExistsError:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "a folder has this name", str(path)) from None
        return False
    return True


def _fsync_dir(folder: Path) -> None:
    """Make the renames in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_sidecar(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(_sidecar(path).read_bytes())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _walk(folder: Path, key_prefix: str, prefix: str) -> Iterator[str]:
    """Keys under ``folder`` that start with ``prefix``, in the byte order S3 lists them."""
    try:
        with os.scandir(folder) as entries:
            found = [(e.name, e.is_dir(follow_symlinks=False), e.is_file()) for e in entries]
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        raise StorageError(f"local list {folder.as_uri()} failed: {exc.strerror}") from exc
    # Sorting folders as "name/" gives the order of the full keys ('-' < '/' < '0').
    for name, is_dir, is_file in sorted(found, key=lambda f: f[0] + "/" if f[1] else f[0]):
        key = key_prefix + name
        if is_dir:
            if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                yield from _walk(folder / name, key + "/", prefix)
        elif is_file and key.startswith(prefix) and not _segment_problem(name):
            yield key


@contextlib.contextmanager
def _local_errors(op: str, key: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise StorageError(f"local {op} of {key!r} failed: {reason}") from exc


# --------------------------------------------------------------------------------------------
# S3-compatible bucket


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
            "ContentType": _check_content_type(content_type),
            "Metadata": {k: _encode_meta_value(v) for k, v in _check_metadata(metadata).items()},
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
            metadata={k: _decode_meta_value(v) for k, v in response.get("Metadata", {}).items()},
        )

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def list(self, prefix: str = "") -> Iterator[str]:
        _validate_prefix(prefix)
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


# --------------------------------------------------------------------------------------------
# Opening a store by URI


def open_store(uri: str, settings: Settings, *, s3_client: S3Client | None = None) -> ObjectStore:
    """The store for ``uri``: ``s3://bucket[/prefix]``, ``file:///abs/dir`` or a plain path.

    ``s3_client`` replaces the client built from ``settings`` (tests aim one at a local
    server). Unknown schemes and credentials inside the URI are refused with ConfigError.
    """
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        if "@" in parts.netloc:
            raise ConfigError("credentials in an s3:// URI are not allowed; use the AWS chain")
        if not parts.netloc or parts.query or parts.fragment:
            raise ConfigError("an s3 store URI is s3://bucket or s3://bucket/prefix")
        client = s3_client if s3_client is not None else make_s3_client(settings)
        return S3Store(client, parts.netloc, parts.path)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError("a file:// store URI must be local: file:///absolute/dir")
        return LocalStore(Path(unquote(parts.path)))
    if parts.scheme == "":
        return LocalStore(Path(uri))
    raise ConfigError(f"unsupported store scheme {parts.scheme!r}: use s3://, file:// or a path")


def make_durable(store: ObjectStore | None) -> None:
    """Make durable what was put into ``store`` with ``durable=False``: one ``os.sync()``
    for a local store (cheaper than three fsyncs for each of many small objects, such as a
    plan's shard files); nothing for S3, durable on every put."""
    if isinstance(store, LocalStore):
        os.sync()
