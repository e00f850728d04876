"""What every object store is: the :class:`ObjectStore` protocol and the rules on keys, metadata.

Every store speaks in *keys*: relative, ``/``-separated strings such as
``images/ab/abcdef…/0.png`` (:mod:`qwbatch.storage.layout` says which key holds what). A key
may not start with ``/``, hold ``.``/``..`` or empty segments, backslashes or control
characters, so no key can escape the store's root. ``sanitize_key_part`` turns any user string
(a manifest row id) into one safe segment. User metadata follows S3's rules in every store,
so what works on a laptop works in a bucket.

The stores (:mod:`qwbatch.storage.local`, :mod:`qwbatch.storage.s3`) are synchronous; the
engine calls them through ``asyncio.to_thread``. Failures are translated at their boundary::

    StorageTransientError   throttling, 5xx, timeouts, dropped connections: retry later
    StorageError            access denied, no such bucket, bad key, full disk: record it
    └── ObjectNotFoundError ``get`` of a key that does not exist

Messages name the operation, the object's URI and the store's error code; they never carry
credentials (we never read them: boto3 takes them from the standard AWS chain).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from qwbatch.core.errors import StorageError

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
        problem = segment_problem(segment)
        if problem:
            raise StorageError(f"invalid key {key!r}: {problem}")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise StorageError(f"invalid key {key[:40]!r}…: longer than {MAX_KEY_BYTES} bytes")
    return key


def validate_prefix(prefix: str) -> str:
    """A ``list`` prefix: empty, or a key, or a key followed by ``/``."""
    if prefix:
        validate_key(prefix.removesuffix("/"))
    return prefix


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def segment_problem(segment: str) -> str | None:
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


def check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
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
    return sum(len(k) + len(encode_meta_value(v)) for k, v in metadata.items())


def encode_meta_value(value: str) -> str:
    """Plain printable ASCII as is; anything else as RFC 2047 ``=?UTF-8?B?…?=``."""
    if _PLAIN_VALUE.fullmatch(value) and not value.startswith("=?"):
        return value
    encoded = base64.b64encode(value.encode("utf-8", "surrogatepass")).decode("ascii")
    return f"=?UTF-8?B?{encoded}?="


def decode_meta_value(value: str) -> str:
    match = _ENCODED_VALUE.fullmatch(value)
    if not match:
        return value
    try:
        return base64.b64decode(match.group(1), validate=True).decode("utf-8", "surrogatepass")
    except (binascii.Error, UnicodeDecodeError):
        return value  # not ours; hand it back as the store gave it


def check_content_type(content_type: str) -> str:
    if not _CONTENT_TYPE.fullmatch(content_type):
        raise StorageError(f"invalid content type {content_type[:60]!r}: printable ASCII only")
    return content_type
