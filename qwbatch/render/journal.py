"""The run journal: what a shard was about to send, which tasks the provider accepted, and
what each request ended as, kept in the run's store so a crash or a restart loses nothing.

Layout, beside the run's other records::

    runs/<run_id>/journal/<shard>/<writer>-<seq>.jsonl     one object per flush

Each object holds JSON lines, one entry each (``t`` is POSIX seconds):

- ``intent``: a provider call is about to be sent (``endpoint`` ``sync`` or ``async``,
  ``attempt``); written and made durable *before* the request leaves.
- ``task``: the provider accepted an async task (``task_id``); durable before polling.
- ``answer``: the provider's answer to the last call (result URLs, billed images), written
  as soon as it arrives, so a crash while downloading harvests those URLs, not a new call;
- ``ambiguous``: the last call's answer was lost after it was sent: it may be billed;
- ``failed``: the last call was answered with an error (throttled, 5xx, refused): not billed.
- ``absent``: the last call, an async submission cut by a crash, created no task (the
  provider's task listing proves it, see :mod:`qwbatch.render.recovery`): not billed.
- ``done``: the request's final catalog records and its billing counters. Not waited for:
  if a crash loses it, the resume finds the request's images in the store (or its journaled
  answer) and records them again without a call; only a request that ended without an image
  (refused, moderated) may be sent once more, which costs nothing.

Appends are cheap by group commit: an entry goes to a buffer and one background writer puts
everything buffered as one new object, so the requests of a shard share a store write; a
writer that is busy lets the next batch grow. Objects are never rewritten (S3 cannot append),
and a crash loses only entries not yet flushed: calls that had not been sent, or whose
outcome the resume re-derives (see :class:`JournalState`). A store that is down blocks the
writer, and so blocks new submissions, until it is back or ``retry_s`` has passed.

When a shard has finished and its catalog part is written, its journal objects are deleted.
Until then they hold the provider's result URLs, which are signed and valid for 24 hours:
capabilities to fetch the run's own images, kept in the run's own store, never logged.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from qwbatch.core.errors import JournalError, StorageError, StorageTransientError
from qwbatch.core.types import CatalogRecord, ProviderImage, ProviderResult, RenderRequest
from qwbatch.storage.layout import journal_key, journal_prefix
from qwbatch.storage.stores import ObjectStore

Endpoint = Literal["sync", "async"]
CallState = Literal["sent", "accepted", "answered", "ambiguous", "failed", "absent"]

#: Parallel GETs when a shard's journal is read back.
_READ_WORKERS = 16


@dataclass(slots=True)
class Finished:
    """A request that ended: its catalog records and what it cost, as journaled."""

    records: list[CatalogRecord]
    billed_images: int = 0
    possible_extra_images: int = 0
    possible_extra_cost: float = 0.0
    ambiguous_calls: int = 0
    recovered_tasks: int = 0


@dataclass(slots=True)
class Call:
    """One provider call the journal saw go out."""

    endpoint: Endpoint
    sent_at: float
    model: str = ""
    n: int = 1
    state: CallState = "sent"
    #: The provider's answer, once journaled.
    result: ProviderResult | None = None


@dataclass(slots=True)
class RequestState:
    """Everything the journal knows about one request (by request key)."""

    calls: list[Call] = field(default_factory=list)
    task_ids: list[str] = field(default_factory=list)
    finished: Finished | None = None

    @property
    def unanswered(self) -> Call | None:
        """The last call, if it went out and nothing was journaled about its answer."""
        if self.finished is None and self.calls and self.calls[-1].state == "sent":
            return self.calls[-1]
        return None


@dataclass(slots=True)
class JournalState:
    """A shard's journal, replayed: what a resume must not redo.

    - a request with ``finished`` is not sent again: its records are restored;
    - a request with a known task id is polled and harvested, not resubmitted;
    - a sync call with no journaled answer counts as ambiguous (it may have been billed);
    - an async submission with no journaled task id is an *orphan*: the provider may hold a
      task nobody knows the id of, which :mod:`qwbatch.render.recovery` looks for.
    """

    requests: dict[str, RequestState] = field(default_factory=dict)

    def apply(self, entry: dict[str, Any]) -> None:
        state = self.requests.setdefault(str(entry.get("key")), RequestState())
        kind = entry.get("kind")
        if kind == "intent":
            call = Call(entry["endpoint"], float(entry["t"]), entry.get("model", ""))
            call.n = int(entry.get("n", 1))
            state.calls.append(call)
        elif kind == "task":
            state.task_ids.append(str(entry["task_id"]))
            if state.calls:
                state.calls[-1].state = "accepted"
        elif kind == "answer" and state.calls:
            state.calls[-1].state = "answered"
            state.calls[-1].result = result_from_json(entry["result"])
        elif kind == "ambiguous" and state.calls:
            state.calls[-1].state = "ambiguous"
        elif kind == "failed" and state.calls and state.calls[-1].state == "sent":
            state.calls[-1].state = "failed"
        elif kind == "absent" and state.calls and state.calls[-1].state == "sent":
            state.calls[-1].state = "absent"
        elif kind == "done":
            state.finished = Finished(
                records=[CatalogRecord(**r) for r in entry["records"]],
                billed_images=int(entry.get("billed", 0)),
                possible_extra_images=int(entry.get("extra_images", 0)),
                possible_extra_cost=float(entry.get("extra_cost", 0.0)),
                ambiguous_calls=int(entry.get("ambiguous_calls", 0)),
                recovered_tasks=int(entry.get("recovered", 0)),
            )

    def get(self, key: str) -> RequestState:
        return self.requests.get(key) or RequestState()

    def finished(self, key: str) -> Finished | None:
        return self.get(key).finished

    def known_task(self, key: str) -> str | None:
        """The last task id the provider gave this request, unless an orphan came after it."""
        state = self.get(key)
        if state.finished is None and state.task_ids and state.unanswered is None:
            return state.task_ids[-1]
        return None

    def answer(self, key: str) -> ProviderResult | None:
        """The provider's journaled answer to a request that never finished: harvest it."""
        state = self.get(key)
        if state.finished is None and state.calls and state.calls[-1].state == "answered":
            return state.calls[-1].result
        return None

    def calls(self, key: str) -> int:
        """Provider calls already made for this request."""
        return len(self.get(key).calls)

    def prior_ambiguous(self, key: str) -> int:
        """Calls whose answer was lost: journaled as ambiguous, a sync call cut by a crash,
        or an earlier call whose answer never reached the journal (counted to be safe)."""
        state = self.get(key)
        calls = state.calls
        count = sum(1 for call in calls if call.state == "ambiguous")
        count += sum(1 for call in calls[:-1] if call.state == "sent")
        unanswered = state.unanswered
        return count + (1 if unanswered is not None and unanswered.endpoint == "sync" else 0)

    def orphan_since(self, key: str) -> float | None:
        """When an async submission with no journaled answer was sent, if there is one."""
        unanswered = self.get(key).unanswered
        return unanswered.sent_at if unanswered and unanswered.endpoint == "async" else None

    def task_ids(self) -> set[str]:
        return {task for state in self.requests.values() for task in state.task_ids}

    def in_flight(self) -> dict[str, Call]:
        """Requests whose last call went out with no journaled answer: key → that call."""
        return {key: call for key, state in self.requests.items() if (call := state.unanswered)}

    def priority(self, key: str) -> int:
        """0 for a request with an answer or a task to harvest (its clock is ticking), then
        orphans, then the rest: a resume harvests what is paid for first."""
        if self.known_task(key) or self.answer(key):
            return 0
        return 1 if self.orphan_since(key) is not None else 2


class Journal:
    """The journal an engine writes to. This base class keeps nothing (tests, dry runs);
    :class:`StoreJournal` keeps it in the run's store."""

    def __init__(self, state: JournalState | None = None) -> None:
        self.state = state or JournalState()
        #: Every task id this shard knows: replayed ones and those recorded since.
        self.known_tasks: set[str] = self.state.task_ids()

    async def intent(self, request: RenderRequest, endpoint: Endpoint, attempt: int) -> None:
        """Record that a call is about to be sent; returns once that is durable."""

    async def task(self, request: RenderRequest, task_id: str, *, recovered: bool = False) -> None:
        """Record the task id the provider accepted; returns once that is durable."""
        self.known_tasks.add(task_id)

    def answer(self, request: RenderRequest, result: ProviderResult) -> None:
        """Record the provider's answer to the last call (flushed with the next batch)."""

    def ambiguous(self, request: RenderRequest) -> None:
        """Record that the last call's answer was lost (flushed with the next batch)."""

    def failed(self, request: RenderRequest) -> None:
        """Record that the last call was answered with an error (flushed with the next batch)."""

    def absent(self, request: RenderRequest) -> None:
        """Record that the last call, an async submission a crash cut, is proven to have
        created no task (flushed with the next batch, so before the call that follows it)."""

    def done(self, key: str, finished: Finished) -> None:
        """Record a request's final records and counters (flushed with the next batch)."""

    async def close(self) -> None:
        """Flush whatever is buffered."""


class StoreJournal(Journal):
    """A shard's journal in an ``ObjectStore``, written by group commit.

    ``retry_s`` bounds how long a store that keeps failing transiently is retried (seconds)
    before the journal gives up with :class:`~qwbatch.core.errors.JournalError`.
    """

    def __init__(
        self,
        store: ObjectStore,
        run_id: str,
        label: str,
        *,
        state: JournalState | None = None,
        retry_s: float = 3600.0,
        backoff_s: tuple[float, float] = (0.05, 5.0),
    ) -> None:
        super().__init__(state)
        self.store = store
        self.prefix = journal_prefix(run_id, label)
        self.retry_s = retry_s
        self.backoff_s = backoff_s
        #: This writer's name: sorts after every earlier writer of the same shard.
        self.writer = f"{time.time_ns() // 1_000_000:014d}-{secrets.token_hex(3)}"
        self._seq = 0
        self._buffer: list[str] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._broken: JournalError | None = None
        #: Objects written and entries flushed, for reports and benchmarks.
        self.writes = 0
        self.entries = 0

    @classmethod
    def open(cls, store: ObjectStore, run_id: str, label: str, **options: Any) -> StoreJournal:
        """The shard's journal with everything earlier writers left replayed into its state."""
        return cls(store, run_id, label, state=read_journal(store, run_id, label), **options)

    # -- entries --------------------------------------------------------------------------

    async def intent(self, request: RenderRequest, endpoint: Endpoint, attempt: int) -> None:
        entry: dict[str, Any] = {"kind": "intent", "key": request.request_key}
        entry.update(endpoint=endpoint, attempt=attempt, model=request.model, n=request.n)
        await self._append(entry, wait=True)

    async def task(self, request: RenderRequest, task_id: str, *, recovered: bool = False) -> None:
        self.known_tasks.add(task_id)
        entry = {"kind": "task", "key": request.request_key, "task_id": task_id}
        await self._append({**entry, "recovered": recovered}, wait=True)

    def answer(self, request: RenderRequest, result: ProviderResult) -> None:
        entry = {"kind": "answer", "key": request.request_key, "result": asdict(result)}
        self._append_nowait(entry)

    def ambiguous(self, request: RenderRequest) -> None:
        self._append_nowait({"kind": "ambiguous", "key": request.request_key})

    def failed(self, request: RenderRequest) -> None:
        self._append_nowait({"kind": "failed", "key": request.request_key})

    def absent(self, request: RenderRequest) -> None:
        self._append_nowait({"kind": "absent", "key": request.request_key})

    def done(self, key: str, finished: Finished) -> None:
        entry = {
            "kind": "done",
            "key": key,
            "records": [asdict(record) for record in finished.records],
            "billed": finished.billed_images,
            "extra_images": finished.possible_extra_images,
            "extra_cost": finished.possible_extra_cost,
            "ambiguous_calls": finished.ambiguous_calls,
            "recovered": finished.recovered_tasks,
        }
        self._append_nowait(entry)

    async def close(self) -> None:
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)
        if self._buffer and self._broken is None:
            self._kick()
            await self.close()

    def discard(self) -> int:
        """Delete this shard's journal objects (once its catalog part is written); how many."""
        keys = list(self.store.list(self.prefix))
        for key in keys:
            self.store.delete(key)
        return len(keys)

    # -- group commit ---------------------------------------------------------------------

    async def _append(self, entry: dict[str, Any], *, wait: bool) -> None:
        future = self._append_nowait(entry, wait=wait)
        if future is not None:
            await future

    def _append_nowait(
        self, entry: dict[str, Any], *, wait: bool = False
    ) -> asyncio.Future[None] | None:
        if self._broken is not None:
            raise JournalError(self._broken.message)
        entry["t"] = time.time()
        self._buffer.append(json.dumps(entry, ensure_ascii=False, separators=(",", ":")))
        future: asyncio.Future[None] | None = None
        if wait:
            future = asyncio.get_running_loop().create_future()
            self._waiters.append(future)
        self._kick()
        return future

    def _kick(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_all())

    async def _flush_all(self) -> None:
        while self._buffer:
            lines, self._buffer = self._buffer, []
            waiters, self._waiters = self._waiters, []
            try:
                await self._write(lines)
            except JournalError as exc:
                self._broken = exc
                for future in waiters + self._waiters:
                    if not future.done():
                        future.set_exception(JournalError(exc.message))
                self._waiters = []
                return
            for future in waiters:
                if not future.done():
                    future.set_result(None)

    async def _write(self, lines: list[str]) -> None:
        key = journal_key(self.prefix, self.writer, self._seq)
        self._seq += 1
        data = ("\n".join(lines) + "\n").encode("utf-8")
        deadline = time.monotonic() + self.retry_s
        delay, delay_max = self.backoff_s
        while True:
            try:
                await asyncio.to_thread(
                    self.store.put, key, data, content_type="application/x-ndjson"
                )
            except StorageTransientError as exc:
                if time.monotonic() + delay > deadline:
                    raise JournalError(f"journal {key}: store unavailable: {exc.message}") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, delay_max)
                continue
            except StorageError as exc:
                raise JournalError(f"journal {key}: {exc.message}") from exc
            self.writes += 1
            self.entries += len(lines)
            return


def result_from_json(data: dict[str, Any]) -> ProviderResult:
    """A :class:`ProviderResult` from its ``asdict`` form."""
    return ProviderResult(
        **{
            **data,
            "images": tuple(ProviderImage(**image) for image in data["images"]),
            "item_errors": tuple(tuple(pair) for pair in data.get("item_errors", ())),
        }
    )


def read_journal(store: ObjectStore, run_id: str, label: str) -> JournalState:
    """Replay a shard's journal objects, oldest writer first, into a :class:`JournalState`."""
    keys = sorted(store.list(journal_prefix(run_id, label)))
    state = JournalState()
    for entry in _entries(store, keys):
        state.apply(entry)
    return state


def read_run_journal(store: ObjectStore, run_id: str) -> dict[str, JournalState]:
    """Every shard's journal state in a run: shard label → state."""
    prefix = journal_prefix(run_id)
    labels = sorted({key[len(prefix) :].split("/", 1)[0] for key in store.list(prefix)})
    return {label: read_journal(store, run_id, label) for label in labels}


def _entries(store: ObjectStore, keys: list[str]) -> Iterable[dict[str, Any]]:
    with ThreadPoolExecutor(max_workers=_READ_WORKERS) as pool:
        for data in pool.map(store.get, keys):
            for line in data.decode("utf-8").splitlines():
                if line.strip():
                    yield json.loads(line)
