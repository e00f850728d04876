"""A local directory as an object store (:class:`LocalStore`): plain files, atomic writes."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from qwbatch.core.errors import ObjectNotFoundError, StorageError
from qwbatch.storage.base import (
    DEFAULT_CONTENT_TYPE,
    SIDECAR_SUFFIX,
    TEMP_PREFIX,
    ObjectInfo,
    PutResult,
    check_content_type,
    check_metadata,
    segment_problem,
    validate_key,
    validate_prefix,
)


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
            "content_type": check_content_type(content_type),
            "metadata": check_metadata(metadata),
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
        validate_prefix(prefix)
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
        elif is_file and key.startswith(prefix) and not segment_problem(name):
            yield key


@contextlib.contextmanager
def _local_errors(op: str, key: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise StorageError(f"local {op} of {key!r} failed: {reason}") from exc


def _md5_hex(data: bytes) -> str:
    """S3's etag of a single-part upload: a checksum, not a security measure."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()
