"""The account's shared rate limit as a Prefect server holds it: its name and size, the
variable beside it, and reading, creating and resizing it (:func:`ensure_rate_limit`).

:mod:`qwbatch.limits.shared` leases from it; ``qwbatch limits`` reads it.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

#: Seconds of traffic one rate lease covers (20 req/s → 5 tokens a lease).
LEASE_S = 0.25
#: Room the shared rate limit has beyond one lease, as a fraction of a lease. The limit lets
#: a lease out only when the one before has (almost) decayed, so leases — each spent at the
#: limiter's pace — follow one another instead of piling up; the slack forgives a worker
#: that asks a little late.
BUCKET_SLACK = 0.5
#: Slots of the shared rate limit per request. The server decays ``active_slots`` by
#: ``floor(decay × seconds)`` and restarts the clock at every grant, so each grant loses up
#: to one slot of decay: with one slot per request that cost 17 % of 2 req/s here. With 100
#: slots per request the loss is under 1 %.
SLOTS_PER_REQUEST = 100


def lease_size(rps: float) -> int:
    """Rate tokens leased per acquisition: :data:`LEASE_S` seconds of traffic, at least 1."""
    return max(1, math.floor(rps * LEASE_S))


def bucket_slots(rps: float) -> int:
    """The shared rate limit's ``limit``, in slots: one lease and :data:`BUCKET_SLACK` more."""
    return math.ceil(lease_size(rps) * (1 + BUCKET_SLACK) * SLOTS_PER_REQUEST)


def limit_name(scope: str, model: str) -> str:
    """The name of the shared rate limit of ``model`` on account ``scope``."""
    clean = scope.translate({ord(c): "_" for c in "/%&><"})
    return f"qwbatch-rps:{model}@{clean}"


def variable_name(scope: str, model: str) -> str:
    """The Prefect variable holding what the workers of account ``scope`` learned about
    ``model``'s limit. Variable names allow lowercase letters, digits, ``-`` and ``_``
    only, so the rest becomes ``_`` and a checksum of the whole keeps names apart."""
    whole = f"{model}@{scope}"
    clean = re.sub(r"[^a-z0-9_-]", "_", whole.lower())[:200]
    return f"qwbatch-learned-{clean}-{zlib.crc32(whole.encode()):08x}"


def default_scope(base_url: str) -> str:
    """The account scope of a provider base URL: its host and port."""
    return urlsplit(base_url).netloc or base_url


def prefect_api_url() -> str | None:
    """The Prefect API this process talks to; None when it would start an ephemeral one."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


@dataclass(frozen=True, slots=True)
class SharedState:
    """What a Prefect server holds for one model: requests in the rate limit's bucket (of
    its size) and its rate, requests per second."""

    rate_name: str
    in_bucket: float
    bucket: float
    rps: float


async def read_shared_state(scope: str, model: str) -> SharedState | None:
    """The shared rate limit of ``model`` on account ``scope``; None until one is created."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    rate_name = limit_name(scope, model)
    async with get_client() as client:
        try:
            rate = await client.read_global_concurrency_limit_by_name(rate_name)
        except ObjectNotFound:
            return None
    return SharedState(
        rate_name=rate_name,
        in_bucket=rate.active_slots / SLOTS_PER_REQUEST,
        bucket=rate.limit / SLOTS_PER_REQUEST,
        rps=rate.slot_decay_per_second / SLOTS_PER_REQUEST,
    )


async def ensure_rate_limit(client: PrefectClient, name: str, rps: float) -> None:
    """Create the shared rate limit ``name`` for ``rps`` requests per second, or set an
    existing one to it, never letting out more than either rate allows.

    Workers lease from the limit while it changes, so the update must not lose their grants.
    Writing back the slots read a moment earlier would: a lease granted between the read and
    the write vanishes from the count, and its tokens go out on top of the rate. So:

    - a raise (the new size at least the old): ``active_slots`` is not written. The server
      keeps its own count, every grant in it, and restarts its decay clock at the update;
      the decay since the last grant (under one lease) is forgone, never an extra grant;
    - a cut (a smaller size): the slots held are written down to the new size, or to those
      read plus one lease at the old rate, whichever is less — every grant the race could
      have missed is counted. Not Prefect's ``upsert_global_concurrency_limit_by_name``: it
      keeps slots leased at the old rate, to drain at the new one (measured, a limit moved
      from 1,000 to 2 req/s two seconds after a full lease held 37,000 slots, three minutes
      of waiting).
    """
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectNotFound

    size, decay = bucket_slots(rps), rps * SLOTS_PER_REQUEST
    try:
        existing = await client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=size, slot_decay_per_second=decay)
        )
        return
    if existing.limit == size and existing.slot_decay_per_second == decay:
        return
    update = GlobalConcurrencyLimitUpdate(limit=size, slot_decay_per_second=decay)
    if existing.limit > size:  # a raise leaves the server's own count alone
        old_rps = existing.slot_decay_per_second / SLOTS_PER_REQUEST
        missed = lease_size(max(old_rps, rps)) * SLOTS_PER_REQUEST
        update = GlobalConcurrencyLimitUpdate(
            limit=size,
            slot_decay_per_second=decay,
            active_slots=min(size, existing.active_slots + missed),
        )
    await client.update_global_concurrency_limit(name, update)
