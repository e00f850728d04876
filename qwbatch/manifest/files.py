"""Where a manifest's Parquet bytes come from: local files, or objects in an S3-compatible bucket.

:func:`manifest_files` turns a manifest location into the Parquet files to read, in order:

==============================  ==============================================================
location                        files
==============================  ==============================================================
``path/m.parquet``              that file
``path/folder``                 the folder's part files in name order
``s3://bucket/m.parquet``       that object
``s3://bucket/folder/``         the objects directly under the prefix, in key order (also when
                                the trailing ``/`` is left off and no object has that key)
==============================  ==============================================================

In folders, names starting with ``_`` or ``.`` and ``.crc`` files are skipped: Spark and
DuckDB write ``_SUCCESS`` and checksum files beside their parts.

S3 objects are read with ranged GETs through the same boto3 client the output store uses
(:func:`qwbatch.storage.stores.open_store`: endpoint, region and addressing style from Settings,
credentials from the standard AWS chain), so pyarrow's Parquet reader still streams record
batches — the footer first, then each row group's column chunks as it reaches them — without
downloading the whole file. Every range is read with ``If-Match`` on the etag seen when the
manifest was opened, so a manifest overwritten mid-read fails loudly instead of mixing two
versions. Reads go through a read-ahead buffer of :data:`S3_READ_BUFFER_BYTES`.

Edit inputs of a manifest on object storage are refused row by row for now
(:class:`RemoteManifestInputs`): a relative path would mean an object beside the manifest, and
a local path means nothing to a worker on another machine.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol
from urllib.parse import urlsplit

import pyarrow.parquet as pq

from qwbatch.core.errors import ManifestError, StorageError
from qwbatch.storage.stores import S3Store, open_store

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from mypy_boto3_s3 import S3Client

    from qwbatch.core.settings import Settings

#: Read-ahead per open S3 manifest file, in bytes: one ranged GET fetches at least this much.
S3_READ_BUFFER_BYTES: Final = 4 * 1024 * 1024


class ManifestFile(Protocol):
    """One Parquet file of a manifest. ``str()`` names it in messages."""

    def open(self) -> pq.ParquetFile:
        """The file opened for reading (its footer read); OSError or ArrowException if not."""
        ...


def is_remote(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names a manifest on object storage (``s3://``)."""
    return isinstance(location, str) and location.startswith("s3://")


def manifest_files(
    location: str | os.PathLike[str],
    *,
    settings: Settings | None = None,
    s3_client: S3Client | None = None,
) -> list[ManifestFile]:
    """The Parquet files of the manifest at ``location`` (see the module docstring).

    ``settings`` configure the S3 client (default: ``Settings()`` from the environment);
    ``s3_client`` replaces that client. Raises ManifestError when there is nothing to read.
    """
    if is_remote(location):
        return _s3_files(str(location), settings, s3_client)
    return _local_files(Path(location))


def _skipped(name: str) -> bool:
    return name.startswith(("_", ".")) or name.endswith(".crc")


@dataclass(frozen=True, slots=True)
class LocalManifestFile:
    path: Path

    def open(self) -> pq.ParquetFile:
        return pq.ParquetFile(self.path)

    def __str__(self) -> str:
        return str(self.path)


def _local_files(path: Path) -> list[ManifestFile]:
    if path.is_dir():
        files: list[ManifestFile] = [
            LocalManifestFile(p)
            for p in sorted(path.iterdir())
            if p.is_file() and not _skipped(p.name)
        ]
        if not files:
            raise ManifestError(f"cannot read manifest {path}: the folder has no Parquet files")
        return files
    return [LocalManifestFile(path)]


# --------------------------------------------------------------------------- S3


@dataclass(frozen=True, slots=True)
class S3ManifestFile:
    """One manifest object: read in ranges, pinned to the etag seen when it was listed."""

    store: S3Store
    key: str
    size: int
    etag: str

    def open(self) -> pq.ParquetFile:
        raw = _RangeReader(self.store, self.key, self.size, self.etag)
        # pre_buffer (pyarrow's default) would fetch every column chunk of the file at once:
        # a whole-file download before the first batch. Without it, reads follow the batches.
        return pq.ParquetFile(
            io.BufferedReader(raw, buffer_size=S3_READ_BUFFER_BYTES), pre_buffer=False
        )

    def __str__(self) -> str:
        return self.store.uri(self.key)


class _RangeReader(io.RawIOBase):
    """A read-only, seekable view of one S3 object; each ``readinto`` is one ranged GET."""

    def __init__(self, store: S3Store, key: str, size: int, etag: str) -> None:
        super().__init__()
        self._store = store
        self._key = key
        self._size = size
        self._etag = etag
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        length = min(len(view), self._size - self._pos)
        if length <= 0:
            return 0
        data = self._store.get_range(self._key, self._pos, length, if_match=self._etag)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _s3_files(
    location: str, settings: Settings | None, s3_client: S3Client | None
) -> list[ManifestFile]:
    parts = urlsplit(location)
    if not parts.netloc or parts.query or parts.fragment or "@" in parts.netloc:
        raise ManifestError(
            f"cannot read manifest {location}: an S3 manifest is s3://bucket/key.parquet "
            "or s3://bucket/folder/"
        )
    if settings is None:
        from qwbatch.core.settings import Settings

        settings = Settings()
    store = open_store(f"s3://{parts.netloc}", settings, s3_client=s3_client)
    assert isinstance(store, S3Store)  # an s3:// root always opens an S3Store
    key = parts.path.lstrip("/")
    try:
        if key and not key.endswith("/"):
            single = _object(store, key)
            if single is not None:
                return [single]
        files = _folder(store, key.rstrip("/"))
    except StorageError as exc:
        raise ManifestError(f"cannot read manifest {location}: {exc.message}") from exc
    if not files:
        raise ManifestError(
            f"cannot read manifest {location}: no such object, and no Parquet files under it"
        )
    return files


def _object(store: S3Store, key: str) -> S3ManifestFile | None:
    info = store.head(key)
    if info is None:
        return None
    return S3ManifestFile(store, key, info.size, info.etag)


def _folder(store: S3Store, prefix: str) -> list[ManifestFile]:
    start = f"{prefix}/" if prefix else ""
    files: list[ManifestFile] = []
    for key in store.list(start):
        name = key[len(start) :]
        if "/" in name or _skipped(name):
            continue  # only the folder's own files, as for a local folder
        found = _object(store, key)
        if found is not None:
            files.append(found)
    return files


# --------------------------------------------------------------------------- inputs


class RemoteManifestInputs:
    """The input resolver for a manifest on object storage: refuses each input, with why.

    A row that names input images is rejected (the others go on): inputs relative to an
    ``s3://`` manifest, and inputs fetched from S3 or HTTPS, come with the edit-inputs feature.
    """

    def __init__(self, manifest_uri: str) -> None:
        self.manifest_uri = manifest_uri

    def __call__(self, uri: str) -> str:
        raise ManifestError(
            f"input image {uri!r} cannot be used: inputs of a manifest on object storage "
            f"({self.manifest_uri}) are not supported yet; they come with the edit-inputs "
            "feature (until then, keep an edit manifest and its images in a local folder)"
        )
