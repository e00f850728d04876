"""The simulator's memory: billing ledger and counters, fault dice, results and async tasks.

Everything here is touched only from the server's event loop thread. Times are POSIX seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from qwbatch.simulator.protocol import InputImage, Job
from qwbatch.simulator.render import Recipe

TaskStatus = Literal["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"]
#: Rendered result bytes kept in memory (the recipe is kept regardless, and re-renders).
RESULT_BYTES_CACHE = 64


@dataclass(frozen=True, slots=True)
class LedgerInput:
    """An edit input as the simulator received it (None fields: a URL it did not fetch)."""

    sha256: str | None
    format: str | None
    width: int
    height: int
    bytes: int | None


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """Images billed for one request (sync) or one task (async), and the inputs it edited."""

    request_id: str
    task_id: str | None
    model: str
    images: int
    prompt_sha256: str
    seed: int
    time: float
    inputs: tuple[LedgerInput, ...] = ()


@dataclass(slots=True)
class Ledger:
    """What was billed, and counters a test or benchmark can assert on."""

    entries: list[LedgerEntry] = field(default_factory=list)
    #: Requests received, by endpoint: generation, image-synthesis, tasks, cancel, results.
    requests: Counter[str] = field(default_factory=Counter)
    #: Error responses sent, by code (429s included).
    errors: Counter[str] = field(default_factory=Counter)
    throttled: int = 0
    polls: int = 0
    dropped: int = 0
    #: POSIX times of submissions (generation, task creation) that reached the rate check,
    #: and of those it let through: what the account was offered and what it accepted.
    offered_at: list[float] = field(default_factory=list)
    admitted_at: list[float] = field(default_factory=list)

    def bill(
        self,
        job: Job,
        images: int,
        *,
        request_id: str,
        task_id: str | None,
        inputs: Sequence[InputImage] = (),
    ) -> None:
        if images > 0:
            received = tuple(
                LedgerInput(
                    i.sha256, i.format, i.width, i.height, None if i.data is None else len(i.data)
                )
                for i in inputs
            )
            self.entries.append(
                LedgerEntry(
                    request_id,
                    task_id,
                    job.model,
                    images,
                    job.prompt_sha256,
                    job.seed,
                    time.time(),
                    received,
                )
            )

    def snapshot(self) -> dict[str, Any]:
        """The JSON of ``GET /_sim/ledger``.

        ``billed_images`` and ``by_model`` are the totals; ``entries`` one per billed request
        or task; ``requests`` counts requests by endpoint, ``errors`` error answers by code
        (429s too), ``throttled`` the 429s, ``polls`` task queries, ``dropped`` the
        connections closed without an answer; ``offered_at`` and ``admitted_at`` the times
        of submissions at the rate check and of those it let through (see ``peak_rate``).
        """
        by_model: Counter[str] = Counter()
        for entry in self.entries:
            by_model[entry.model] += entry.images
        return {
            "billed_images": sum(by_model.values()),
            "by_model": dict(by_model),
            "entries": [asdict(entry) for entry in self.entries],
            "requests": dict(self.requests),
            "errors": dict(self.errors),
            "throttled": self.throttled,
            "polls": self.polls,
            "dropped": self.dropped,
            "offered_at": list(self.offered_at),
            "admitted_at": list(self.admitted_at),
        }


def peak_rate(times: Sequence[float], window_s: float) -> float:
    """The most events in any window of ``window_s`` seconds, per second.

    ``times`` are event times in seconds (any order). A token bucket of rate ``r`` and burst
    ``b`` admits at most ``b + r * window_s`` events in a window, so over a window of a few
    seconds the peak shows whether a rate was kept, bursts included.
    """
    if window_s <= 0:
        raise ValueError(f"window_s must be positive, got {window_s}")
    ordered = sorted(times)
    most = start = 0
    for end, stamp in enumerate(ordered):
        while stamp - ordered[start] > window_s:
            start += 1
        most = max(most, end - start + 1)
    return most / window_s


class Dice:
    """Seeded fault dice that do not depend on request interleaving.

    A roll is a hash of (seed, fault kind, request key); the key includes how many times this
    exact request was seen, so a retry rolls again while a rerun of the same workload, however
    its requests interleave, sees the same faults.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._seen: Counter[str] = Counter()

    def key(self, scope: str, payload: bytes) -> str:
        """A roll key for the next sighting of ``payload`` at ``scope`` (an endpoint)."""
        digest = hashlib.sha256(scope.encode() + b"\x00" + payload).hexdigest()
        self._seen[digest] += 1
        return f"{digest}#{self._seen[digest]}"

    def roll(self, kind: str, key: str) -> float:
        """A number in [0, 1)."""
        digest = hashlib.sha256(f"{self.seed}\x00{kind}\x00{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def hit(self, rate: float, kind: str, key: str) -> bool:
        return rate > 0 and self.roll(kind, key) < rate

    def clear(self) -> None:
        self._seen.clear()


@dataclass(frozen=True, slots=True)
class StoredResult:
    recipe: Recipe
    expires_at: float
    corrupt: bool


class ResultStore:
    """Result images by URL token: the recipe, its expiry, and a small cache of bytes."""

    def __init__(self) -> None:
        self._results: dict[str, StoredResult] = {}
        self._bytes: OrderedDict[str, bytes] = OrderedDict()

    def add(self, recipe: Recipe, *, ttl_s: float, corrupt: bool) -> tuple[str, float]:
        """Store a result; its URL token and expiry (POSIX seconds)."""
        now = time.time()
        if len(self._results) % 1024 == 0:
            self._sweep(now)
        token = uuid.uuid4().hex
        expires_at = now + ttl_s
        self._results[token] = StoredResult(recipe, expires_at, corrupt)
        return token, expires_at

    def get(self, token: str) -> StoredResult | None:
        return self._results.get(token)

    def cached_bytes(self, token: str) -> bytes | None:
        data = self._bytes.get(token)
        if data is not None:
            self._bytes.move_to_end(token)
        return data

    def cache_bytes(self, token: str, data: bytes) -> None:
        self._bytes[token] = data
        while len(self._bytes) > RESULT_BYTES_CACHE:
            self._bytes.popitem(last=False)

    def clear(self) -> None:
        self._results.clear()
        self._bytes.clear()

    def _sweep(self, now: float) -> None:
        # Expired results answer 403 for a day; after that they are forgotten (404).
        stale = [t for t, r in self._results.items() if r.expires_at + 86_400 < now]
        for token in stale:
            del self._results[token]


@dataclass(slots=True)
class Task:
    """One async task and everything ``GET /tasks/{id}`` reports about it."""

    task_id: str
    #: The request that created the task.
    request_id: str
    job: Job
    submitted_at: float
    expires_at: float
    status: TaskStatus = "PENDING"
    scheduled_at: float | None = None
    ended_at: float | None = None
    #: Per item: {orig_prompt, actual_prompt, url} or {code, message}.
    results: list[dict[str, str]] = field(default_factory=list)
    billed: int = 0
    code: str | None = None
    message: str | None = None
    runner: asyncio.Task[None] | None = None


class TaskStore:
    """Async tasks by id; an id past its lifetime reads as unknown."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}

    def add(self, job: Job, *, request_id: str, ttl_s: float) -> Task:
        now = time.time()
        task = Task(str(uuid.uuid4()), request_id, job, submitted_at=now, expires_at=now + ttl_s)
        self._tasks[task.task_id] = task
        return task

    def get(self, task_id: str) -> Task | None:
        task = self._tasks.get(task_id)
        if task is not None and time.time() >= task.expires_at:
            del self._tasks[task_id]
            return None
        return task

    def all(self) -> list[Task]:
        """Every task still within its lifetime."""
        now = time.time()
        return [task for task in self._tasks.values() if now < task.expires_at]

    def clear(self) -> None:
        for task in self._tasks.values():
            if task.runner is not None:
                task.runner.cancel()
        self._tasks.clear()
