"""The request rate shared by every worker of an account, held in a Prefect global
concurrency limit.

One limit per (account scope, model), created by the run that first needs it:
``qwbatch-rps:{model}@{scope}``, a rate limit (``slot_decay_per_second`` = rps). Each
acquisition is an HTTP round trip, and Prefect's ``rate_limit()`` taking one slot per
  request reached well under the limit in the benchmark, so :class:`PrefectBudget` leases
  a quarter second of traffic at a time (:func:`lease_size`). The limit holds one lease and half
of another (:func:`bucket_slots`), so leases are granted one after another at the rate;
each lease *drips* into the worker's pool, one token every ``1 / rate`` from its grant,
and expires unspent after twice that. Every worker's sends thus follow the shared limit's
grants, and together they fit the provider's own bucket (about a second of traffic).

**The in-flight cap is not shared: it applies per worker process** (the local
:class:`~qwbatch.limits.gate.Gate` of :class:`~qwbatch.limits.local.ModelLimiter`). Slots
held on the server would outlive a worker that crashes (SIGKILL, OOM) until their lease
expired — Prefect's renewable leases last 60 s at least — and every other worker of the
account would stall on them. A rate limit cannot leak that way: its slots decay by
themselves, so a dead worker's share is free again within a lease (a quarter second). Give
each worker ``max_in_flight`` = the account's cap divided by the number of workers when the
provider's in-flight cap is tight.

Acquisitions are strict, as ``rate_limit(..., strict=True)`` is: by default Prefect only warns
about a limit that does not exist, and limits nothing. Rate tokens are acquired with the
client's ``increment_concurrency_slots`` rather than ``rate_limit()`` itself, after reading
the limit, and only when it has room: on Prefect's server a denied request (HTTP 423)
stamps the limit as updated without decaying it, so the decay since the last grant is lost.
Asking blindly cost a single worker about 7 % of 20 req/s that way; read first, it loses
nothing alone, and with four workers only the rare race between two reads of the same room.

**What one worker learns, all use** (:mod:`qwbatch.limits.learning`): the limit a worker
learns from 429s and the rate it sends at are the account's, so every
:data:`SYNC_S` seconds each worker reads a Prefect variable (:func:`variable_name`) holding
the last ones any worker published, takes them when another worker wrote them, and publishes
its own when they moved (a cut, a climb, a probe); the shared rate limit is set to the
published rate, so the workers' sum follows it. A run's limiter starts from the variable
when there is one: a new worker, or the next run, starts near the learned limit.

**One ramp for the account** (:mod:`qwbatch.limits.ramp`): the first worker of an idle
account (no limit yet, or none leased from for :data:`IDLE_RESTART_S`) begins a ramp of the
shared limit, from a quarter of the rate to all of it, and publishes when it began in the
same variable; every worker sets the limit along that ramp until it ends or a cut ends it.
The rate a 429 is learned at is the shared limit's (:meth:`PrefectBudget.shared_rate`): what
the account received, ramp included, not one worker's share.

When no shared limit can be had — no Prefect server configured (the ephemeral server serves
one process only), the server unreachable at the start, the limit gone — the budget *opens*:
the local limiter alone paces the process, and a log line says so. A server that goes away
once leasing works (a restart) is waited for, sending nothing, for up to
:data:`OUTAGE_WAIT_S`: opening then would let every worker send at the whole rate.

All Prefect I/O runs on one daemon thread with its own event loop (:class:`_LoopThread`):
shards come and go on other threads' loops, but the leasing must outlive them.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import contextvars
import datetime
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Literal, Protocol

import httpx

from qwbatch.limits.gate import TokenPool
from qwbatch.limits.learning import Learned
from qwbatch.limits.local import IDLE_RESTART_S, LimitSpec
from qwbatch.limits.prefect_limit import (
    BUCKET_SLACK,
    SLOTS_PER_REQUEST,
    ensure_rate_limit,
    lease_size,
    limit_name,
    variable_name,
)
from qwbatch.limits.ramp import SharedRamp

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

log = logging.getLogger("qwbatch.limits")

#: Seconds of random delay added to a wait for room in the shared limit, so that workers
#: waiting for the same room do not ask at the same instant. Well inside the slack
#: (``LEASE_S × BUCKET_SLACK`` = 125 ms): asking this much late costs no rate.
ASK_JITTER_S = 0.03
#: Seconds allowed to create the limits before falling back to local limiting.
SETUP_TIMEOUT_S = 15.0
#: Seconds a limit that worked waits for its unreachable server (a restart) before the
#: process paces itself alone; and between two tries meanwhile.
OUTAGE_WAIT_S = 120.0
OUTAGE_RETRY_S = 1.0
#: Seconds between two reads of what the workers learned (one HTTP round trip each).
SYNC_S = 0.5
#: A rate or limit that moved by less than this fraction is not published again.
SYNC_MOVED = 0.01
#: Seconds between two raises of the shared rate limit to a climbing rate (a cut lowers it
#: at once). Each change is a write on the Prefect server, and writes every half second
#: stalled the leasing of every worker for seconds on a loaded machine.
RAISE_EVERY_S = 3.0
#: Seconds between two raises of the shared rate limit along the account's ramp.
RAMP_STEP_S = 1.0
#: Seconds after a lease waited for room in the shared limit during which its rate counts as
#: in use (holding the workers back): the learned rate climbs only then.
BINDING_S = 2.0

State = Literal["starting", "shared", "local"]


class Learning(Protocol):
    """What a shared budget needs from its limiter to share what it learns."""

    def learned(self) -> Learned:
        """The limiter's rate and learned limit now (its ramp not applied)."""

    def adopt(self, other: Learned) -> None:
        """Take another worker's rate and learned limit."""


class _LoopThread:
    """A daemon thread running an event loop for the process's Prefect I/O."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="qwbatch-shared-limits", daemon=True
                )
                thread.start()
                self._loop = loop
            return self._loop

    def spawn(
        self, coro: Coroutine[Any, Any, None], context: contextvars.Context
    ) -> concurrent.futures.Future[asyncio.Task[None]]:
        """Start ``coro`` as a task on the loop, inside ``context``; a future of the task."""
        loop = self.loop()
        made: concurrent.futures.Future[asyncio.Task[None]] = concurrent.futures.Future()

        def create() -> None:
            made.set_result(loop.create_task(coro, context=context))

        loop.call_soon_threadsafe(create)
        return made


LOOP = _LoopThread()


class PrefectBudget:
    """One model's share of the account's request rate, leased from a Prefect global limit.

    Give it to a :class:`~qwbatch.limits.local.ModelLimiter`, which takes a rate token from
    :attr:`pool` for each send (its in-flight cap stays local to the process). Setup starts at
    once on the background loop; until it is done requests wait (a few hundred ms).
    """

    def __init__(self, *, scope: str, model: str, spec: LimitSpec) -> None:
        self.spec = spec
        self.rate_name = limit_name(scope, model)
        self.lease = lease_size(spec.rps)
        self.pool = TokenPool()
        self.pool.low_water = self.lease
        self.pool.on_low = self._want_tokens
        self._rate: Callable[[], float] = lambda: spec.rps
        self.state: State = "starting"
        self.reason = ""
        self.leases_taken = 0
        #: Lease requests the server denied (HTTP 423: another worker took the room first).
        self.leases_denied = 0
        self._closed = False
        self._context = contextvars.copy_context()  # Prefect settings of the creating thread
        self._loop = LOOP.loop()
        self._rate_wanted = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: PrefectClient | None = None
        self._learning: Learning | None = None
        self.variable = variable_name(scope, model)
        self._writer = uuid.uuid4().hex[:12]  # tells our own publications from others'
        self._published: Learned | None = None
        self._seen: tuple[int, str] | None = None
        self._seq = 0
        self._room_waited_at = float("-inf")  # a lease last waited for room (monotonic)
        self._limit_rate: float | None = None  # the shared rate limit's rate, as last set
        self._limit_set_at = float("-inf")
        self._server_rate: float | None = None  # the shared limit's rate, as last read
        self.ramp = SharedRamp(spec.ramp_s, spec.ramp_start)
        self._set_in_ramp = False  # the limit was last set along the account's ramp
        self._ramp_begun: float | None = None  # when the ramp this worker began began
        _OPEN_BUDGETS.add(self)

    # -- SharedBudget ----------------------------------------------------------------------

    def start(self, rate: Callable[[], float], learning: Learning | None = None) -> None:
        """Create the limit and start leasing, on the background loop.

        ``rate()`` is the limiter's current rate (ramp and cuts applied): leases are sized
        to it, so a slowed-down worker does not sit on tokens the others could spend.
        ``learning``: share what the limiter learns with the other workers.
        """
        self._rate = rate
        self._learning = learning
        LOOP.spawn(self._run(), self._context)

    def binding(self) -> bool | None:
        if self.state != "shared":
            return None
        return time.monotonic() - self._room_waited_at <= BINDING_S

    def shared_rate(self) -> float | None:
        """The shared limit's rate as last read (the account's, its ramp applied); None when
        not sharing."""
        return self._server_rate if self.state == "shared" else None

    def describe(self) -> str:
        if self.state == "shared":
            return f"shared via Prefect limit {self.rate_name!r} (leases of {self.lease})"
        if self.state == "local":
            return f"local to this process ({self.reason})"
        return "starting shared limits"

    def close(self) -> None:
        """Stop leasing and close the Prefect client (waits up to 5 s). Tokens leased and
        not spent decay on the server by themselves."""
        if self._closed:
            return
        self._closed = True
        _OPEN_BUDGETS.discard(self)
        if self._loop.is_closed():
            return
        done = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        try:
            done.result(timeout=5.0)
        except (concurrent.futures.TimeoutError, RuntimeError, httpx.HTTPError):
            log.debug("the Prefect client of %s was left to the process exit", self.rate_name)

    # -- signals from other threads -----------------------------------------------------------

    def _want_tokens(self) -> None:
        self._loop.call_soon_threadsafe(self._rate_wanted.set)

    # -- on the background loop -------------------------------------------------------------

    async def _run(self) -> None:
        from prefect.client.orchestration import get_client

        client = get_client()
        try:
            await asyncio.wait_for(self._setup(client), SETUP_TIMEOUT_S)
        except (TimeoutError, httpx.HTTPError, OSError) as exc:
            self._fall_back(_reason(exc))
            return
        self.state = "shared"
        log.info("limits for %s: %s", self.rate_name, self.describe())
        self._tasks = [asyncio.create_task(self._lease_tokens(client))]
        for task in self._tasks:
            task.add_done_callback(self._on_task_done)
        if self._learning is not None:
            self._tasks.append(asyncio.create_task(self._keep_limit(client, self._learning)))

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        """A leasing task that dies of an unforeseen error must not leave requests waiting
        for tokens forever: fall back to local limits, and say why."""
        if task.cancelled() or task.exception() is None or self.state != "shared":
            return
        exc = task.exception()
        log.error("shared limits for %s failed", self.rate_name, exc_info=exc)
        self._fall_back(f"leasing failed: {type(exc).__name__}: {exc}")

    async def _setup(self, client: PrefectClient) -> None:
        from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

        await client.__aenter__()
        self._client = client
        try:
            limit = await client.read_global_concurrency_limit_by_name(self.rate_name)
        except ObjectNotFound:
            limit = None
        rps, learning = self.spec.rps, self._learning
        if learning is not None:
            # Start from what the workers of the account learned, when they did.
            await self._sync_once(client, learning, publish=False)
            known = learning.learned()
            if limit is not None and not _idle(limit.updated):
                return  # other workers lease from it: follow their ramp, not a new one
            # The account is idle: this worker begins its ramp, for every worker.
            rps, cuts = known.rate, known.cuts
            self.ramp.begin(cuts)
            self._ramp_begun = self.ramp.began
            await self._sync_once(client, learning, force=True)
            rps *= self.ramp.fraction(cuts)
            self._set_in_ramp = self.ramp.running(cuts)
        # ObjectAlreadyExists: another worker created it between our read and our create.
        try:
            await ensure_rate_limit(client, self.rate_name, rps)
            self._limit_rate, self._limit_set_at = rps, time.monotonic()
        except ObjectAlreadyExists:
            pass
        except httpx.HTTPStatusError as exc:
            # On PostgreSQL the loser of that race gets a 500 (a unique violation), not a
            # 409: the limit exists if another worker made it.
            if exc.response.status_code < 500:
                raise
            try:
                await client.read_global_concurrency_limit_by_name(self.rate_name)
            except ObjectNotFound:
                raise exc from None

    def _fall_back(self, reason: str) -> None:
        self.state, self.reason = "local", reason
        # Said before the waiting requests go: whatever they do next comes after the line.
        log.warning(
            "limits for %s are local to this process: %s. Other workers are not counted; "
            "set PREFECT_API_URL to a Prefect server to share them",
            self.rate_name,
            reason,
        )
        self.pool.open()

    async def _lease_tokens(self, client: PrefectClient) -> None:
        """Lease rate tokens for the requests that wait for one, a little ahead.

        The next lease is asked for when :data:`BUCKET_SLACK` of the current one is left —
        just when the shared limit can grant it — so it arrives as the last tokens go. More
        ahead would leave tokens waiting in the pool, to go out late, bunched with other
        workers' sends; for the same reason a lease expires, unspent, after twice the time
        it takes to spend.
        """
        pool = self.pool
        while not self._closed and self.state == "shared":
            await self._rate_wanted.wait()
            self._rate_wanted.clear()
            while not self._closed and pool.waiting + self._ahead() > pool.tokens:
                if not await self._lease_once(client):
                    return

    def _ahead(self) -> int:
        """Tokens left in the pool at which the next lease is asked for: at least one, so
        that a lease of one token is asked for while the last is spent, not after (the
        shared limit's room still paces the grants)."""
        return max(1, math.floor(self.lease * BUCKET_SLACK))

    async def _lease_once(self, client: PrefectClient) -> bool:
        """One lease into the pool; False when leasing failed and the budget fell back."""
        rate = self._rate()
        lease = self.lease = lease_size(rate)
        self.pool.low_water = lease
        away_since: float | None = None
        while True:
            try:
                granted = await self._acquire_tokens(client, lease)
                break
            except (httpx.HTTPError, OSError) as exc:
                now = time.monotonic()
                if away_since is None:
                    away_since = now
                    log.warning(
                        "the shared limit %s cannot be read (%s): sends wait for the Prefect "
                        "server, up to %g s",
                        self.rate_name,
                        _reason(exc),
                        OUTAGE_WAIT_S,
                    )
                if self._closed or now - away_since >= OUTAGE_WAIT_S:
                    self._fall_back(f"leasing from {self.rate_name!r} failed: {_reason(exc)}")
                    return False
                await asyncio.sleep(OUTAGE_RETRY_S)
        if away_since is not None:
            log.warning("the shared limit %s is back", self.rate_name)
        if not granted:
            self._fall_back(f"the limit {self.rate_name!r} does not exist")
            return False
        self.leases_taken += 1
        self.lease = granted
        self.pool.put(granted, interval=1 / rate, expires_at=time.monotonic() + 2 * granted / rate)
        return True

    async def _acquire_tokens(self, client: PrefectClient, tokens: int) -> int:
        """``rate_limit(name, occupy=tokens, strict=True)``, on our client and our schedule;
        the tokens granted: ``tokens``, or fewer when the limit holds fewer (it follows the
        learned rate, which another worker may have lowered).

        0 when the limit does not exist (what ``strict=True`` refuses). The limit is read
        first and asked only when it has room: on Prefect's server a denied request (HTTP
        423) stamps the limit as updated without decaying it, so every denial throws away
        the decay since the last grant, and a worker asking blindly, early, lost up to a
        tenth of the rate that way. While there is no room the worker sleeps until the decay
        makes some, plus a random part of :data:`ASK_JITTER_S`, so that workers waiting for
        the same room read one after another: the first takes it, the others read that it is
        gone. A denial then needs two workers to read within one round trip of each other,
        and costs only the decay since the grant that beat it (milliseconds).
        """
        from prefect.exceptions import ObjectNotFound

        slots = tokens * SLOTS_PER_REQUEST
        while True:
            try:
                limit = await client.read_global_concurrency_limit_by_name(self.rate_name)
            except ObjectNotFound:
                return 0
            # The limit's rate follows what the workers learned (not only the configured one).
            decay = limit.slot_decay_per_second or self.spec.rps * SLOTS_PER_REQUEST
            self._server_rate = decay / SLOTS_PER_REQUEST
            tokens = max(1, min(tokens, int(limit.limit // SLOTS_PER_REQUEST)))
            slots = tokens * SLOTS_PER_REQUEST
            missing = limit.active_slots + slots - limit.limit
            if missing > 0:
                self._room_waited_at = time.monotonic()
                await asyncio.sleep(missing / decay + random.uniform(0.0, ASK_JITTER_S))
                continue
            try:
                response = await client.increment_concurrency_slots(
                    names=[self.rate_name], slots=slots, mode="rate_limit"
                )
            except httpx.HTTPStatusError as exc:
                # 423: another worker read the same room and asked first. 422 ("slots
                # requested is greater than the limit"): another worker lowered the limit
                # (a cut) between our read and our ask. Either way: read it again. 404: the
                # limit was deleted between the read and the ask (not an outage to wait out).
                if exc.response.status_code == 404:
                    return 0
                if exc.response.status_code not in (422, 423):
                    raise
                self.leases_denied += 1
                continue
            return tokens if response.json() else 0

    async def _keep_limit(self, client: PrefectClient, learning: Learning) -> None:
        """Every :data:`SYNC_S` seconds: take what another worker published, publish what
        this one learned, and set the shared limit to the learned rate along the account's
        ramp. A failed round trip is tried again at the next tick."""
        while not self._closed and self.state == "shared":
            await asyncio.sleep(SYNC_S)
            try:
                await self._sync_once(client, learning)
                await self._follow(client, learning.learned())
            except (httpx.HTTPError, OSError) as exc:
                log.debug("sharing what %s learned failed: %s", self.rate_name, _reason(exc))

    async def _sync_once(
        self,
        client: PrefectClient,
        learning: Learning,
        *,
        publish: bool = True,
        force: bool = False,
    ) -> None:
        """Read the variable (take another worker's rate, limit and ramp when news), then
        publish this worker's when they moved, or ``force``."""
        from prefect.client.schemas.actions import VariableCreate, VariableUpdate
        from prefect.exceptions import ObjectAlreadyExists

        variable = await client.read_variable_by_name(self.variable)
        value = variable.value if variable is not None else None
        if isinstance(value, dict):
            theirs = Learned.from_json(value)
            seq, writer = int(value.get("seq", 0) or 0), str(value.get("by", ""))
            self._seq = max(self._seq, seq)
            if theirs is not None and (seq, writer) != self._seen:
                self._seen = (seq, writer)
                if writer != self._writer:
                    learning.adopt(theirs)
                    self._published = theirs
                    self.ramp.take(value.get("ramp_from"), theirs.cuts)
        if not publish:
            return
        mine = learning.learned()
        moved = self._published is None or _moved(mine, self._published)
        if not (force or moved):
            return
        self._seq += 1
        payload: dict[str, Any] = {
            **mine.to_json(),
            "ramp_from": self.ramp.began,
            "seq": self._seq,
            "by": self._writer,
        }
        if variable is None:
            with contextlib.suppress(ObjectAlreadyExists):
                await client.create_variable(VariableCreate(name=self.variable, value=payload))
        else:
            await client.update_variable(VariableUpdate(name=self.variable, value=payload))
        self._seen, self._published = (self._seq, self._writer), mine

    async def _follow(self, client: PrefectClient, mine: Learned) -> None:
        """Set the shared limit to the learned rate along the account's ramp: lower at once
        (a cut), higher every :data:`RAMP_STEP_S` in the ramp, every :data:`RAISE_EVERY_S`
        after it (each write stalls the leasing a little)."""
        target = mine.rate * self.ramp.fraction(mine.cuts)
        now = time.monotonic()
        theirs = self.ramp.running(mine.cuts) and self.ramp.began != self._ramp_begun
        if theirs and (self._limit_rate is None or target > self._limit_rate):
            # Another worker's ramp: it raises the limit, step by step (two writers would
            # write twice as often, and a late write could step it back).
            return
        # Set along the ramp, the limit takes its next step (the ramp's last) a step later.
        every = RAMP_STEP_S if self._set_in_ramp else RAISE_EVERY_S
        if self._limit_rate is not None:
            if not _apart(target, self._limit_rate):
                return
            if target > self._limit_rate and now - self._limit_set_at < every:
                return
        await ensure_rate_limit(client, self.rate_name, target)
        self._limit_rate, self._limit_set_at = target, now
        self._set_in_ramp = self.ramp.running(mine.cuts)

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.__aexit__(None, None, None)
            self._client = None


def _moved(now: Learned, then: Learned) -> bool:
    """Whether ``now`` differs from ``then`` enough to publish (:data:`SYNC_MOVED`)."""
    return _apart(now.rate, then.rate) or _apart(now.learned, then.learned) or now.cuts != then.cuts


def _apart(a: float | None, b: float | None) -> bool:
    """Whether two rates differ by more than :data:`SYNC_MOVED` (or one is None)."""
    if a is None or b is None:
        return a is not b
    return abs(a - b) > SYNC_MOVED * max(a, b)


def _idle(updated: datetime.datetime | None) -> bool:
    """Whether a shared limit last changed (a grant, a resize) :data:`IDLE_RESTART_S` ago or
    more: no worker leases from it, and the account's rate begins a ramp again."""
    if updated is None:
        return True
    if updated.tzinfo is None:
        updated = updated.replace(tzinfo=datetime.UTC)
    age = datetime.datetime.now(datetime.UTC) - updated
    return age.total_seconds() >= IDLE_RESTART_S


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer from the Prefect server within {SETUP_TIMEOUT_S:g} s"
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__
    if cause is not None and str(cause):
        text = f"{text} ({cause})"
    return text


_OPEN_BUDGETS: set[PrefectBudget] = set()


@atexit.register
def _close_all() -> None:
    """Stop leasing and close the Prefect clients at exit."""
    for budget in list(_OPEN_BUDGETS):
        budget.close()
