"""Opening a store by URI: an S3-compatible bucket or a local directory, behind one protocol.

The protocol and the key rules are in :mod:`qwbatch.storage.base`, the two stores in
:mod:`qwbatch.storage.local` and :mod:`qwbatch.storage.s3`; their names are importable from
here too, as they were before the split.

Example::

    store = open_store("s3://assets/qwbatch", settings)
    result = store.put(output_key("ab12", 0), png, content_type="image/png",
                       metadata={"request-key": "ab12"}, if_none_match=True)
    store.head(output_key("ab12", 0)).metadata  # {"request-key": "ab12"}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from qwbatch.core.errors import ConfigError
from qwbatch.storage.base import (
    DEFAULT_CONTENT_TYPE,
    MAX_KEY_BYTES,
    MAX_METADATA_BYTES,
    MAX_SEGMENT_BYTES,
    SIDECAR_SUFFIX,
    TEMP_PREFIX,
    ObjectInfo,
    ObjectStore,
    PutResult,
    metadata_size,
    sanitize_key_part,
    validate_key,
)
from qwbatch.storage.local import LocalStore
from qwbatch.storage.s3 import S3Store, make_s3_client, s3_client_config

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from qwbatch.core.settings import Settings

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "MAX_KEY_BYTES",
    "MAX_METADATA_BYTES",
    "MAX_SEGMENT_BYTES",
    "SIDECAR_SUFFIX",
    "TEMP_PREFIX",
    "LocalStore",
    "ObjectInfo",
    "ObjectStore",
    "PutResult",
    "S3Store",
    "make_durable",
    "make_s3_client",
    "metadata_size",
    "open_store",
    "s3_client_config",
    "sanitize_key_part",
    "validate_key",
]


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
