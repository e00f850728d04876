"""Stores for tests: a local folder that fails on cue, the seam for store outages; the content
type and ETag (an MD5 hex digest) the store tests expect."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path

from qwbatch.storage.stores import DEFAULT_CONTENT_TYPE, LocalStore, ObjectInfo, PutResult

PNG_TYPE = "image/png"


def md5_hex(data: bytes) -> str:
    """The MD5 hex digest of ``data``: a single-part object's ETag."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class FlakyStore:
    """A LocalStore whose next ``fail_puts`` puts raise ``error``: the store seam for outages."""

    def __init__(self, root: Path, error: Exception, fail_puts: int) -> None:
        self.inner = LocalStore(root)
        self.root_uri = self.inner.root_uri
        self.error = error
        self.fail_puts = fail_puts
        self.puts = 0

    def uri(self, key: str) -> str:
        return self.inner.uri(key)

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
        self.puts += 1
        if self.fail_puts > 0:
            self.fail_puts -= 1
            raise self.error
        return self.inner.put(
            key,
            data,
            content_type=content_type,
            metadata=metadata,
            if_none_match=if_none_match,
            durable=durable,
        )

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def head(self, key: str) -> ObjectInfo | None:
        return self.inner.head(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)
