"""Edit inputs: where the bytes an input URI names come from, and each source's rules.

============================  ==============================================================
input                         read from
============================  ==============================================================
``photos/mug.jpg``            a file: relative to the manifest's folder, else to each of
                              ``Settings.input_roots`` in turn (first found wins)
``/abs/path.png``,            a file that must lie (after resolving symlinks) inside the
``file:///abs/path.png``      manifest's folder or an input root
``s3://bucket/key``           S3 with the output store's client settings (endpoint, region,
                              addressing) and the standard AWS credential chain
``https://host/x.png``        the web, under :mod:`qwbatch.inputs.http`' rules (public
                              addresses only, checked redirects, size and time caps)
an ``output_uri`` of DEST     the output store itself (``s3://…`` or ``file://…`` under DEST)
``catalog:<row id>[#k]``      the output the DEST catalog records for that row
                              (:mod:`qwbatch.inputs.lineage`)
============================  ==============================================================

Every source refuses an original larger than ``Settings.input_max_download_bytes``. What a
source refuses raises :class:`~qwbatch.core.errors.InputError` with the reason (the caller adds the
input's name); what may pass on a retry raises a ``TransientError``. Checking and normalising
the bytes is :mod:`qwbatch.core.images`' job; fetching each input once per run and staging it for
the shards is :mod:`qwbatch.inputs.staging`'s.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from qwbatch.core.errors import InputError, ObjectNotFoundError, StorageError
from qwbatch.inputs.http import DEFAULT_MAX_BYTES, FetchLimits, HttpInputs, display_url
from qwbatch.inputs.lineage import CATALOG_REF, CatalogRefs
from qwbatch.storage.stores import ObjectStore, S3Store, make_s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from qwbatch.core.settings import Settings

# A scheme is "name://…", or "data:" (a file may be called "a:b.png", as the reader agrees).
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://|^(data):", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Fetched:
    """An input's original bytes; ``via`` is the output URI a ``catalog:`` ref stood for."""

    data: bytes
    via: str | None = None


def display_uri(uri: str) -> str:
    """``uri`` fit for a message or the catalog's notes: URLs lose their query and user info."""
    if uri[:8].lower().startswith(("https://", "http://")):
        return display_url(uri)
    return uri if len(uri) <= 200 else uri[:199] + "…"


class InputFetcher:
    """Reads an input's original bytes from whichever source its URI names. Thread-safe.

    ``roots`` are the folders file inputs may come from, the manifest's first. ``store`` is
    the run's output store (its outputs and catalog may be inputs); None when there is none
    (``qwbatch validate`` without ``--out``). ``s3_client`` builds the S3 client on first
    use; ``http`` fetches web inputs.
    """

    def __init__(
        self,
        *,
        roots: Sequence[Path],
        http: HttpInputs,
        store: ObjectStore | None = None,
        s3_client: Callable[[], S3Client] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if not roots:
            raise ValueError("InputFetcher needs at least one root folder")
        self.roots = [Path(os.path.realpath(root)) for root in roots]
        self.store = store
        self.http = http
        self.max_bytes = max_bytes
        self.refs = CatalogRefs(store) if store is not None else None
        self._make_s3 = s3_client
        self._s3: S3Client | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, settings: Settings, *, manifest_dir: Path, store: ObjectStore | None = None
    ) -> InputFetcher:
        limits = FetchLimits(
            max_bytes=settings.input_max_download_bytes,
            timeout_s=settings.input_fetch_timeout_s,
        )
        return cls(
            roots=[manifest_dir, *settings.input_roots],
            http=HttpInputs(allow_hosts=settings.input_allow_hosts, limits=limits),
            store=store,
            s3_client=lambda: make_s3_client(settings),
            max_bytes=settings.input_max_download_bytes,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> InputFetcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def prefetch_refs(self, uris: Iterable[str]) -> None:
        """Look up every ``catalog:`` ref among ``uris`` in one pass over the catalog."""
        if self.refs is not None:
            self.refs.prefetch(uris)

    def fetch(self, uri: str) -> Fetched:
        """The original bytes ``uri`` names (InputError or a TransientError if not)."""
        if uri.startswith(CATALOG_REF):
            if self.refs is None:
                raise InputError("a catalog: input needs the output store (qwbatch validate --out)")
            target = self.refs.resolve(uri)
            return Fetched(self._read(target), via=target)
        return Fetched(self._read(uri))

    # -- sources -------------------------------------------------------------------------

    def _read(self, uri: str) -> bytes:
        stored = self._from_store(uri)
        if stored is not None:
            return stored
        match = _SCHEME.match(uri)
        scheme = (match.group(1) or match.group(2)).lower() if match else ""
        if scheme in ("https", "http"):
            return self.http.fetch(uri)
        if scheme == "s3":
            return self._from_s3(uri)
        if scheme in ("", "file"):
            return self._from_file(uri)
        kind = "data:" if scheme == "data" else f"{scheme}://"
        raise InputError(
            f"unsupported source {kind} (use a file path, s3://, https:// or catalog:<row id>)"
        )

    def _from_store(self, uri: str) -> bytes | None:
        """An object of the output store named by its URI, or None if ``uri`` is not one."""
        if self.store is None:
            return None
        root = self.store.root_uri.rstrip("/") + "/"
        if not uri.startswith(root):
            return None
        rest = uri[len(root) :]
        key = unquote(rest) if root.startswith("file:") else rest
        try:
            data = self.store.get(key)
        except ObjectNotFoundError:
            raise InputError("no such object in the output store") from None
        except StorageError as exc:
            raise InputError(exc.message) from exc
        self._check_size(len(data))
        return data

    def _from_s3(self, uri: str) -> bytes:
        parts = urlsplit(uri)
        key = parts.path[1:]
        if "@" in parts.netloc or not parts.netloc or not key or parts.query or parts.fragment:
            raise InputError("an S3 input is s3://bucket/key (no credentials, query or fragment)")
        store = S3Store(self._s3_client(), parts.netloc)
        try:
            info = store.head(key)
            if info is None:
                raise InputError("not found (no such key, or no such bucket)")
            self._check_size(info.size)
            data = store.get(key)
        except ObjectNotFoundError:
            raise InputError("not found (no such key, or no such bucket)") from None
        except StorageError as exc:
            raise InputError(exc.message) from exc
        self._check_size(len(data))
        return data

    def _s3_client(self) -> S3Client:
        with self._lock:
            if self._s3 is None:
                if self._make_s3 is None:
                    raise InputError("s3:// inputs are not configured here")
                self._s3 = self._make_s3()
            return self._s3

    def _from_file(self, uri: str) -> bytes:
        text = uri
        if uri.startswith("file:"):
            parts = urlsplit(uri)
            if parts.netloc not in ("", "localhost"):
                raise InputError("a file:// URI must be local (file:///absolute/path)")
            text = unquote(parts.path)
        raw = Path(text)
        if raw.is_absolute():
            path = Path(os.path.realpath(raw))
            if not self._inside_a_root(path):
                raise InputError(
                    f"is outside the manifest's folder and the input roots{self._roots_shown()}"
                )
            return self._read_file(path)
        for root in self.roots:
            path = Path(os.path.realpath(root / raw))
            if not self._inside_a_root(path):
                raise InputError(
                    f"escapes the manifest's folder and the input roots{self._roots_shown()}"
                )
            if path.exists():
                return self._read_file(path)
        raise InputError(f"not found (looked in {', '.join(map(str, self.roots))})")

    def _inside_a_root(self, path: Path) -> bool:
        return any(path.is_relative_to(root) for root in self.roots)

    def _roots_shown(self) -> str:
        return f" ({', '.join(map(str, self.roots))})"

    def _read_file(self, path: Path) -> bytes:
        try:
            info = path.stat()
            if not stat.S_ISREG(info.st_mode):
                raise InputError("is not a regular file")
            self._check_size(info.st_size)
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot be read ({exc.strerror})") from exc
        self._check_size(len(data))
        return data

    def _check_size(self, size: int) -> None:
        if size > self.max_bytes:
            raise InputError(
                f"is {size} bytes; originals over {self.max_bytes} bytes are refused "
                "(QWBATCH_INPUT_MAX_DOWNLOAD_BYTES)"
            )
