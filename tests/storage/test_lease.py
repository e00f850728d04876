"""DEST's lease: one holder at a time, re-entrant in its process, renewed while held, taken
over once its holder died (at once on a local folder, after expiry on S3), on real stores."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from qwbatch.core.errors import DestBusyError
from qwbatch.storage.layout import lease_key
from qwbatch.storage.lease import Lease, LeaseRecord, hold
from qwbatch.storage.stores import LocalStore, ObjectStore, S3Store

_HOLD_AND_SLEEP = """
import sys, time
from qwbatch.storage.lease import hold
from qwbatch.storage.stores import LocalStore
with hold(LocalStore(sys.argv[1]), ttl_s=30, label="child"):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture(params=["local", "s3", "s3-fallback"])
def dest(request, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "dest")
    client = request.getfixturevalue("s3_client")
    store = S3Store(client, request.getfixturevalue("s3_bucket"), "dest")
    if request.param == "s3-fallback":
        store.conditional_puts = False  # a store without conditional writes
    return store


def test_one_holder_at_a_time_and_free_after_release(dest: ObjectStore) -> None:
    with hold(dest, ttl_s=30, label="first", settle_s=0.05) as first:
        assert first is not None
        with hold(dest, ttl_s=30) as inner:  # the same process again: a no-op
            assert inner is None
        second = Lease(dest, ttl_s=30, label="second", settle_s=0.05)
        with pytest.raises(DestBusyError, match="'first'") as busy:
            second.take(wait=False)
        assert dest.root_uri in str(busy.value)
        assert "--wait" in str(busy.value)
    with hold(dest, ttl_s=30, label="third", settle_s=0.05):
        pass


def test_a_waiting_run_takes_the_lease_when_the_holder_releases_it(dest: ObjectStore) -> None:
    first = Lease(dest, ttl_s=2, label="first", settle_s=0.05)
    first.take(wait=False)
    threading.Timer(1.0, first.release).start()
    said: list[str] = []
    began = time.monotonic()
    with hold(dest, ttl_s=2, wait=True, on_wait=said.append, settle_s=0.05):
        waited = time.monotonic() - began
    assert 0.9 < waited < 3.0
    assert len(said) == 1
    assert "'first'" in said[0]


def test_a_renewed_lease_outlives_its_ttl_and_an_expired_one_is_taken_over(
    dest: ObjectStore,
) -> None:
    with hold(dest, ttl_s=0.6, label="renewing", settle_s=0.05):
        time.sleep(1.5)  # more than two ttls: renewed every 0.2 s
        with pytest.raises(DestBusyError):
            Lease(dest, ttl_s=0.6, label="x", settle_s=0.05).take(wait=False)
    # A holder that died without a trace: its record stays, and expires.
    now = time.time()
    dead = LeaseRecord("elsewhere", 1, "dead run", now - 100, now - 1, "dead-token")
    dest.put(lease_key(), dead.to_bytes())
    with hold(dest, ttl_s=30, label="after", settle_s=0.05):
        record = LeaseRecord.from_bytes(dest.get(lease_key()))
        assert record is not None
        assert record.label == "after"


def test_two_runs_racing_for_a_free_s3_lease_one_wins(s3_client, s3_bucket) -> None:
    winners: list[str] = []
    losers: list[str] = []

    def race(name: str, start: threading.Barrier) -> None:
        lease = Lease(S3Store(s3_client, s3_bucket, "race"), ttl_s=30, label=name)
        start.wait()
        try:
            lease.take(wait=False)
            winners.append(name)
        except DestBusyError:
            losers.append(name)

    for _ in range(5):
        winners.clear()
        losers.clear()
        now = time.time()
        expired = LeaseRecord("h", 1, "old", now - 100, now - 1, "t")
        S3Store(s3_client, s3_bucket, "race").put(lease_key(), expired.to_bytes())
        barrier = threading.Barrier(4)
        threads = [threading.Thread(target=race, args=(f"r{i}", barrier)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(winners) == 1, (winners, losers)


def test_a_killed_local_holder_frees_dest_at_once(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD_AND_SLEEP, str(dest)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(DestBusyError, match=f"pid {child.pid}"):
            Lease(LocalStore(dest), ttl_s=30, label="x").take(wait=False)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        # The record still says "expires in ~30 s", but the kernel dropped the dead
        # holder's lock: a local DEST is free at once.
        with hold(LocalStore(dest), ttl_s=30, label="next"):
            pass
    finally:
        child.kill()
        child.wait()
