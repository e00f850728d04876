"""One run holds a DEST: a lease taken before planning and renewed while the run lives.

Two runs rendering into one DEST at once (a cron job overlapping a manual run) would each
plan the same rows and pay for them twice, and neither's journal knows of the other's calls.
So a run takes DEST's lease first, at :func:`~qwbatch.storage.layout.lease_key`: a small JSON
record of its holder (host, pid, what it runs, since when) and an expiry (epoch seconds). The
holder rewrites it every third of ``ttl_s``; a second run finds it held and waits
(``wait=True``) or raises :class:`~qwbatch.core.errors.DestBusyError` naming the holder. A
holder that died stops renewing, and its lease is taken over once it has expired, so a crash
never blocks DEST for longer than ``ttl_s``. Different DESTs never meet.

How the record is made exclusive depends on the store:

- **A local folder**: the record file is also locked with ``fcntl.flock`` while held. The
  kernel drops that lock when the holder dies, so a crashed run's lease is free at once
  (unless the record names a live-looking holder on another host: a folder shared over a
  network filesystem whose locks are not shared; then its expiry decides). Where the
  filesystem has no ``flock``, the fallback below is used.
- **S3**: conditional PUTs. The first holder creates the record with ``If-None-Match: *``;
  renewals and take-overs replace it with ``If-Match: <etag seen>``, so of two runs racing for
  an expired lease exactly one wins. Release writes a record that has already expired.
- **Fallback** (an S3-compatible store that does not implement conditional writes, a folder
  without ``flock``): write the record, wait ``settle_s`` and read it back; the run whose
  record is still there holds DEST. This catches two runs started seconds apart, not two
  writes in the same instant: such stores cannot do better.

The same lease guards one shard of a run while a worker renders it (``key`` a
:func:`~qwbatch.storage.layout.shard_lease_key`): the run's flow tells a shard whose worker
died (its lease expired) from one still rendering, and a worker never renders a shard that
another live worker holds.

A process that already holds DEST's lease may take it again (the CLI holds it while it plans,
and the flow it then runs takes it too): the inner take is a no-op.

Example::

    with hold(store, ttl_s=60, wait=False, label="qwbatch run m.parquet"):
        plan_and_render()   # raises DestBusyError at the start if another run holds DEST
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from qwbatch.core.errors import DestBusyError, StorageError, StorageTransientError
from qwbatch.storage.layout import lease_key
from qwbatch.storage.stores import LocalStore, ObjectStore, S3Store

log = logging.getLogger(__name__)

#: Seconds the fallback waits between writing its record and reading it back.
SETTLE_S = 1.0


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """Who holds DEST and until when (``since`` and ``expires_at`` in epoch seconds)."""

    host: str
    pid: int
    label: str
    since: float
    expires_at: float
    token: str

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseRecord | None:
        """The record, or None for bytes that are not one (treated as a free lease)."""
        try:
            raw = json.loads(data)
            return cls(
                host=str(raw["host"]),
                pid=int(raw["pid"]),
                label=str(raw["label"]),
                since=float(raw["since"]),
                expires_at=float(raw["expires_at"]),
                token=str(raw["token"]),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def live(self, now: float) -> bool:
        return self.expires_at > now

    def describe(self, now: float) -> str:
        since = time.strftime("%H:%M:%S UTC", time.gmtime(self.since))
        return (
            f"a run on host {self.host} (pid {self.pid}, {self.label!r}, since {since}; "
            f"its lease expires in {max(0.0, self.expires_at - now):.0f} s unless renewed)"
        )


class _Claim(Protocol):
    """One way of making DEST's record exclusive."""

    def take(self, mine: LeaseRecord) -> LeaseRecord | None:
        """Take the lease for ``mine``; None when taken, else the live holder's record."""
        ...

    def renew(self, mine: LeaseRecord) -> bool:
        """Extend the lease to ``mine.expires_at``; False when another run holds it now."""
        ...

    def release(self, mine: LeaseRecord) -> None: ...


# --------------------------------------------------------------------------- local folders


class _FileClaim:
    """The record file under a local DEST, locked with ``flock`` while held."""

    def __init__(self, path: Path, fallback: _Claim) -> None:
        self.path = path
        self.fallback = fallback
        self.fd: int | None = None
        self.use_fallback = False

    def take(self, mine: LeaseRecord) -> LeaseRecord | None:
        if self.use_fallback:
            return self.fallback.take(mine)
        import fcntl  # POSIX only; the folder's lock is what makes a local lease exclusive

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot take DEST's lease at {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                held = LeaseRecord.from_bytes(self._read())
                return held or replace(mine, host="?", pid=0, label="unknown")
            log.warning(
                "%s: this filesystem has no flock (%s); DEST's lease falls back to "
                "write-and-read-back, which is not race-safe",
                self.path.parent,
                exc.strerror,
            )
            self.use_fallback = True
            return self.fallback.take(mine)
        held = LeaseRecord.from_bytes(self._read())
        if held is not None and held.live(time.time()) and held.host != mine.host:
            # Locked by nobody here, yet renewed lately from elsewhere: a shared folder
            # whose locks are not shared. Its expiry decides.
            os.close(fd)
            return held
        self.fd = fd
        self._write(mine)
        return None

    def renew(self, mine: LeaseRecord) -> bool:
        if self.use_fallback:
            return self.fallback.renew(mine)
        if self.fd is None:
            return False
        self._write(mine)
        return True

    def release(self, mine: LeaseRecord) -> None:
        if self.use_fallback:
            self.fallback.release(mine)
            return
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self._write(replace(mine, expires_at=time.time()))
        os.close(self.fd)  # closing the only descriptor drops the lock
        self.fd = None

    def _read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError:
            return b""

    def _write(self, record: LeaseRecord) -> None:
        assert self.fd is not None
        data = record.to_bytes()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        os.fsync(self.fd)


# --------------------------------------------------------------------------- object stores


class _ConditionalClaim:
    """The record as an S3 object, created with If-None-Match and replaced with If-Match."""

    def __init__(self, store: S3Store, key: str) -> None:
        self.store = store
        self.key = key
        self.full_key = store.uri(key).removeprefix(f"s3://{store.bucket}/")
        self.etag: str | None = None

    def take(self, mine: LeaseRecord) -> LeaseRecord | None:
        info = self.store.head(self.key)
        if info is None:
            created = self.store.put(
                self.key, mine.to_bytes(), content_type="application/json", if_none_match=True
            )
            if created.created:
                self.etag = created.etag
                return None
            info = self.store.head(self.key)  # another run created it just now
            if info is None:
                return self.take(mine)
        held = LeaseRecord.from_bytes(self._get())
        if held is not None and held.live(time.time()) and held.token != mine.token:
            return held
        # Free (released or expired): replace exactly the version we saw.
        self.etag = self._put_if_match(mine, info.etag)
        if self.etag is None:
            return LeaseRecord.from_bytes(self._get()) or held
        return None

    def renew(self, mine: LeaseRecord) -> bool:
        if self.etag is None:
            return False
        self.etag = self._put_if_match(mine, self.etag)
        return self.etag is not None

    def release(self, mine: LeaseRecord) -> None:
        if self.etag is not None:
            self._put_if_match(replace(mine, expires_at=time.time()), self.etag)
            self.etag = None

    def _get(self) -> bytes:
        try:
            return self.store.get(self.key)
        except StorageError:
            return b""

    def _put_if_match(self, record: LeaseRecord, etag: str) -> str | None:
        """Replace the record if its etag is still ``etag``; the new etag, or None."""
        uri = self.store.uri(self.key)
        try:
            response = self.store.client.put_object(
                Bucket=self.store.bucket,
                Key=self.full_key,
                Body=record.to_bytes(),
                ContentType="application/json",
                IfMatch=f'"{etag}"',
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if error.get("Code") in ("PreconditionFailed", "NoSuchKey") or status in (404, 412):
                return None
            if (status is not None and status >= 500) or status in (408, 409, 429):
                raise StorageTransientError(
                    f"S3 put {uri} failed: {error.get('Code')} (HTTP {status})"
                ) from exc
            raise StorageError(f"S3 put {uri} failed: {error.get('Code')} (HTTP {status})") from exc
        except BotoCoreError as exc:
            raise StorageTransientError(f"S3 put {uri} failed: {type(exc).__name__}") from exc
        return str(response.get("ETag", "")).strip('"') or None


class _ReadBackClaim:
    """The fallback: write the record, wait ``settle_s``, and see whose record is there."""

    def __init__(self, store: ObjectStore, key: str, settle_s: float) -> None:
        self.store = store
        self.key = key
        self.settle_s = settle_s

    def take(self, mine: LeaseRecord) -> LeaseRecord | None:
        held = self._read()
        if held is not None and held.live(time.time()) and held.token != mine.token:
            return held
        self.store.put(self.key, mine.to_bytes(), content_type="application/json")
        time.sleep(self.settle_s)
        now = self._read()
        if now is not None and now.token != mine.token:
            return now
        return None

    def renew(self, mine: LeaseRecord) -> bool:
        held = self._read()
        if held is not None and held.token != mine.token:
            return False
        self.store.put(self.key, mine.to_bytes(), content_type="application/json")
        return True

    def release(self, mine: LeaseRecord) -> None:
        held = self._read()
        if held is None or held.token == mine.token:
            self.store.put(self.key, replace(mine, expires_at=time.time()).to_bytes())

    def _read(self) -> LeaseRecord | None:
        try:
            return LeaseRecord.from_bytes(self.store.get(self.key))
        except StorageError:
            return None


def _claim_for(store: ObjectStore, key: str, settle_s: float) -> _Claim:
    fallback = _ReadBackClaim(store, key, settle_s)
    if isinstance(store, LocalStore):
        return _FileClaim(store.root.joinpath(*key.split("/")), fallback)
    if isinstance(store, S3Store) and store.conditional_puts:
        return _ConditionalClaim(store, key)
    return fallback


# --------------------------------------------------------------------------- holding


class Lease:
    """DEST's lease while this process holds it; renewed on a thread of its own."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        ttl_s: float,
        label: str,
        on_lost: Callable[[str], None] | None = None,
        settle_s: float = SETTLE_S,
        key: str | None = None,
    ) -> None:
        self.store = store
        #: What is leased: DEST (``lease_key()``, the default) or one shard of a run.
        self.key = key or lease_key()
        self.ttl_s = ttl_s
        self.on_lost = on_lost
        now = time.time()
        self.record = LeaseRecord(
            host=socket.gethostname(),
            pid=os.getpid(),
            label=label,
            since=now,
            expires_at=now + ttl_s,
            token=uuid.uuid4().hex,
        )
        self._claim = _claim_for(store, self.key, settle_s)
        self._done = threading.Event()
        self._renewer: threading.Thread | None = None

    def take(self, *, wait: bool, on_wait: Callable[[str], None] | None = None) -> None:
        """Take DEST's lease; with ``wait`` poll until it is free, else DestBusyError."""
        told = False
        while True:
            self.record = replace(self.record, expires_at=time.time() + self.ttl_s)
            held = self._claim.take(self.record)
            if held is None:
                break
            where = self.store.root_uri if self.key == lease_key() else self.store.uri(self.key)
            message = f"{where} is held by {held.describe(time.time())}"
            if not wait:
                raise DestBusyError(
                    f"{message}; wait for it with --wait, or render into another DEST"
                )
            if not told and on_wait is not None:
                on_wait(f"waiting: {message}")
                told = True
            time.sleep(min(2.0, self.ttl_s / 4))
        self._renewer = threading.Thread(target=self._renew, name="qwbatch-lease", daemon=True)
        self._renewer.start()

    def release(self) -> None:
        self._done.set()
        if self._renewer is not None:
            self._renewer.join()
        with contextlib.suppress(StorageError):
            self._claim.release(self.record)

    def _renew(self) -> None:
        every = self.ttl_s / 3
        valid_until = self.record.expires_at
        while not self._done.wait(every):
            self.record = replace(self.record, expires_at=time.time() + self.ttl_s)
            try:
                if self._claim.renew(self.record):
                    valid_until = self.record.expires_at
                    continue
                reason = "another run took it over"
            except StorageError as exc:
                if time.time() < valid_until - every:
                    log.warning("could not renew DEST's lease (will retry): %s", exc)
                    continue
                reason = f"it could not be renewed before it expired ({exc})"
            message = f"lost the lease on {self.store.uri(self.key)}: {reason}"
            log.error(message)
            if self.on_lost is not None:
                self.on_lost(message)
            return


_HELD: dict[tuple[str, str], int] = {}
_HELD_LOCK = threading.Lock()


@contextlib.contextmanager
def hold(
    store: ObjectStore,
    *,
    ttl_s: float,
    wait: bool = False,
    label: str = "qwbatch run",
    on_wait: Callable[[str], None] | None = None,
    on_lost: Callable[[str], None] | None = None,
    settle_s: float = SETTLE_S,
    key: str | None = None,
) -> Iterator[Any]:
    """Hold DEST's lease (or ``key``'s) for the block (see the module's docstring);
    re-entrant per process."""
    root = (store.root_uri, key or lease_key())
    with _HELD_LOCK:
        if root in _HELD:
            _HELD[root] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield None
        finally:
            with _HELD_LOCK:
                _HELD[root] -= 1
        return
    lease = Lease(store, ttl_s=ttl_s, label=label, on_lost=on_lost, settle_s=settle_s, key=key)
    lease.take(wait=wait, on_wait=on_wait)
    with _HELD_LOCK:
        _HELD[root] = 1
    try:
        yield lease
    finally:
        with _HELD_LOCK:
            del _HELD[root]
        lease.release()


def read_record(store: ObjectStore, key: str) -> LeaseRecord | None:
    """The lease record at ``key``, or None when there is none (or it is unreadable)."""
    try:
        return LeaseRecord.from_bytes(store.get(key))
    except StorageError:
        return None
