"""Whether the worker rendering some shards is still alive, from the shards' leases.

A worker holds each shard's lease (:func:`~qwbatch.storage.layout.shard_lease_key`, see
:mod:`qwbatch.storage.lease`) while it renders it and renews it every third of its time to
live. A worker whose machine died renews nothing, and its flow run stays ``Running`` on the
Prefect server forever (nothing there notices by default). The run's flow, which waits for
those flow runs, asks :func:`silent_for` how long a group of shards has shown no sign of
life; past a grace period it marks the flow run crashed and starts its unfinished shards
again elsewhere. The new worker waits for the dead one's leases to expire, then replays
its journal: tasks it had submitted are collected by their ids, never submitted again.

Example::

    quiet = silent_for(store, group, started_at=run_started, now=time.time())
    if quiet is not None and quiet > grace_s:
        resubmit(unfinished(store, group))
"""

from __future__ import annotations

from collections.abc import Sequence

from qwbatch.render.shard_results import read_shard_result
from qwbatch.storage.layout import shard_lease_key
from qwbatch.storage.lease import read_record
from qwbatch.storage.stores import ObjectStore


def unfinished(store: ObjectStore, shard_keys: Sequence[str]) -> list[str]:
    """The shards of ``shard_keys`` with no result saying they finished with nothing left."""
    left = []
    for key in shard_keys:
        result = read_shard_result(store, key)
        if result is None or result.left:
            left.append(key)
    return left


def silent_for(
    store: ObjectStore, shard_keys: Sequence[str], *, started_at: float, now: float
) -> float | None:
    """Seconds since the last sign of life of the worker rendering ``shard_keys``: None
    while one of their leases is live, else since the latest lease's expiry or release, or
    since ``started_at`` (when the flow run started, epoch seconds) if none is later."""
    last = started_at
    for key in shard_keys:
        record = read_record(store, shard_lease_key(key))
        if record is None:
            continue
        if record.live(now):
            return None
        last = max(last, record.expires_at)
    return max(0.0, now - last)
