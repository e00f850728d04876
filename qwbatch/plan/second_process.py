"""The second process of a plan split in two (``qwbatch.plan.split``), and how the two talk.

The second process is started with ``python -c`` (not ``multiprocessing``, whose ``spawn``
re-runs an unguarded ``__main__`` script) and is sent a :class:`Job`: the rows from ``start``
on. It plans them with the same ``Planner`` as the first process and hands back a
:class:`Part` (its counts, the short keys of its new requests, its aliases, shards and
rejects); once the first process has merged it, the second writes its catalog part of
deduplicated rows when told to. Two socket pairs carry the talk: one for the job, the part
and the orders, one for the second process's questions, which a thread of the first answers
(:class:`Helper`): which of a block's keys the catalog holds (the first process's key set,
so it is not held twice), and edit inputs, resolved by the first process's resolver (one
cache, one set of statistics). An error on either side crosses as the exception itself
(pickled, with the other side's traceback as a note).
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pyarrow as pa

from qwbatch.core.errors import PermanentError, PlanHelperError
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.core.types import Alias
from qwbatch.manifest import (
    DuplicateIds,
    InputDigest,
    InputResolver,
    PrefetchingResolver,
    Reject,
    gc_paused,
    read_manifest,
)
from qwbatch.plan.dedup import dedup_part, put_dedup_part
from qwbatch.plan.model import Plan
from qwbatch.plan.stream import KeySet, Planner, planning_pool, shard_writer
from qwbatch.plan.tally import REQUEST_COUNTS
from qwbatch.storage.stores import ObjectStore

#: Label of the second process's catalog part of deduplicated rows.
SECOND_LABEL = "plan_2"
SHORT = 16  # bytes of a short key (catalog_keys.short_key)
#: What the second process runs (``python -c``).
_MAIN = "from qwbatch.plan.second_process import main; main()"


@dataclass(frozen=True, slots=True)
class Job:
    """What the second process plans: rows ``start`` … of ``manifest``."""

    manifest: str | Path
    store: ObjectStore | None
    dry_run: bool
    settings: Settings
    table: ModelTable
    run_id: str
    strict: bool
    size: int
    batch_size: int
    start: int
    first_shard: int
    #: Edit inputs are resolved by the first process's resolver (else the reader's default).
    proxy_inputs: bool


@dataclass(slots=True)
class Part:
    """The second process's plan of its rows, before the merge."""

    rows_read: int
    deduplicated: int
    folded: int
    #: Short keys of its new requests, in the order of their places (16 bytes each).
    shorts: bytes
    aliases: dict[int, list[tuple[Alias, int | None]]]
    shard_keys: list[str]
    shards: int
    rejects: list[Reject]
    #: Model, n and tags of each new request, in the order of their places.
    requests: pa.Table
    #: Which of its shards the merge emptied (filled by the merge).
    emptied: set[int] = field(default_factory=set)


class Helper:
    """The second process, seen from the first: started at once, it plans its part while
    this process plans the first; :meth:`result` waits for its part. A thread answers its
    questions meanwhile (which keys the catalog has, edit inputs)."""

    def __init__(self, job: Job, resolve_input: InputResolver | None) -> None:
        ours, theirs = socket.socketpair()
        asks, asked = socket.socketpair()
        fds = [theirs.fileno(), asked.fileno()]
        path = os.pathsep.join(entry or os.getcwd() for entry in sys.path)
        self.process = subprocess.Popen(  # noqa: S603 - this interpreter, our own module
            [sys.executable, "-c", _MAIN, *map(str, fds)],
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": path},
            start_new_session=True,  # a terminal's Ctrl-C reaches the first process alone
        )
        theirs.close()
        asked.close()
        self._conn = Connection(ours.detach())
        self._conn.send(job)
        self._answers = _Answers(Connection(asks.detach()), resolve_input)
        threading.Thread(
            target=self._answers.serve, name="qwbatch-plan-answers", daemon=True
        ).start()

    def send(self, duplicates: DuplicateIds) -> None:
        """Hand over the repeated ids (the second process waits for them to read)."""
        self._conn.send(duplicates)

    def serve_keys(self, keys: KeySet) -> None:
        """Answer the second process's questions about the catalog's keys from ``keys``."""
        self._answers.ready(keys)

    def result(self) -> Part:
        """The second process's part of the plan (raising its error if it failed); it has
        no more questions about the catalog's keys after it."""
        part = self._receive()
        assert isinstance(part, Part)
        self._answers.keys = None
        return part

    def commit(self) -> None:
        """Let the second process write its catalog part of deduplicated rows."""
        self._conn.send("commit")

    def finish(self, *, commit: bool) -> str | None:
        """Wait for the second process to end; the URI of its catalog part (if committed)."""
        uri = None
        if commit:
            uri = self._receive()
            assert uri is None or isinstance(uri, str)
        else:
            self._conn.send("stop")
        self._conn.close()
        self.process.wait()
        return uri

    def kill(self) -> None:
        """Stop the second process now (no more shard writes once this returns)."""
        self.process.kill()
        self.process.wait()
        self._conn.close()
        self._answers.ready(None)  # a question left waiting for keys gets none

    def _receive(self) -> Any:
        try:
            kind, value = self._conn.recv()
        except (EOFError, OSError):
            code = self.process.wait()
            raise PlanHelperError(
                f"the plan's second process ended before it finished (exit code {code})"
            ) from None
        if kind == "error":
            if self._answers.error is not None:  # it failed for want of an answer
                raise PlanHelperError(
                    "the plan's first process could not answer its second"
                ) from self._answers.error
            raise value
        return value


@dataclass(frozen=True, slots=True)
class _Refused:
    """The resolver refused the input (a PermanentError): the row is rejected with this."""

    message: str


@dataclass(frozen=True, slots=True)
class _Failed:
    """The resolver failed otherwise: the read ends with this error."""

    error: BaseException


class _Answers:
    """The first process's side of the second's questions: ``("keys", shorts)`` (16 bytes
    each) is answered from this process's catalog key set, one byte per key, once that set
    is built; ``("inputs", uris)`` with this process's input resolver (one cache, one set
    of statistics for the whole plan)."""

    def __init__(self, conn: Connection, resolve: InputResolver | None) -> None:
        self._conn = conn
        self._resolve = resolve
        self.keys: KeySet | None = None
        self._ready = threading.Event()
        #: Why answering failed, if it did.
        self.error: BaseException | None = None

    def ready(self, keys: KeySet | None) -> None:
        self.keys = keys
        self._ready.set()

    def serve(self) -> None:
        """Answer until the second process hangs up (or there are no keys to answer with).
        Should answering fail, the connection is closed (the second process then fails,
        rather than wait for an answer) and the error kept for the first process."""
        try:
            self._serve()
        except BaseException as exc:  # kept for the first process to raise
            self.error = exc
        finally:
            self._conn.close()

    def _serve(self) -> None:
        while True:
            try:
                kind, payload = self._conn.recv()
            except (EOFError, OSError):
                return
            if kind == "keys":
                self._ready.wait()
                keys = self.keys
                if keys is None:
                    return
                answer: Any = keys.hits(
                    [payload[i : i + SHORT] for i in range(0, len(payload), SHORT)]
                )
                del keys  # the set is freed once the first process drops it
            else:
                answer = self._inputs(payload)
            try:
                self._conn.send(answer)
            except OSError:
                return

    def _inputs(self, uris: list[str]) -> dict[str, str | InputDigest | _Refused | _Failed]:
        resolve = self._resolve
        assert resolve is not None  # the second process asks only when there is a resolver
        answers: dict[str, str | InputDigest | _Refused | _Failed] = {}
        try:
            if isinstance(resolve, PrefetchingResolver):
                resolve.prefetch(uris)
            for uri in uris:
                try:
                    answers[uri] = resolve(uri)
                except PermanentError as exc:
                    answers[uri] = _Refused(exc.message)
        except BaseException as exc:  # handed to the process that asked
            answers = {uri: _Failed(_portable(exc, note=None)) for uri in uris}
        return answers


class _KeysOfFirst:
    """The second process's catalog keys: asked of the first process, a block at a time."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def hits(self, shorts: list[bytes]) -> bytes:
        self._conn.send(("keys", b"".join(shorts)))
        answer: bytes = self._conn.recv()
        return answer


class _InputsFromFirst:
    """The second process's resolver: asks the first process's (whole batches at once)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._answers: dict[str, str | InputDigest | _Refused | _Failed] = {}

    def prefetch(self, uris: Iterable[str]) -> None:
        wanted = [uri for uri in dict.fromkeys(uris) if uri not in self._answers]
        if wanted:
            self._ask(wanted)

    def __call__(self, uri: str) -> str | InputDigest:
        if uri not in self._answers:
            self._ask([uri])
        answer = self._answers[uri]
        if isinstance(answer, _Refused):
            raise PermanentError(answer.message)
        if isinstance(answer, _Failed):
            raise answer.error
        return answer

    def _ask(self, uris: list[str]) -> None:
        self._conn.send(("inputs", uris))
        self._answers.update(self._conn.recv())


# -- the second process ------------------------------------------------------------------------


def main() -> None:
    """The second process: plan the job it is sent, report, write its part when told."""
    conn, asks = (Connection(int(arg)) for arg in sys.argv[1:3])
    try:
        job: Job = conn.recv()
    except EOFError:
        return
    try:
        with gc_paused(), planning_pool():
            _plan_part(conn, job, asks)
    except (BrokenPipeError, ConnectionResetError, EOFError):
        return  # the first process is gone (it failed, or was killed): nothing to report to


def _plan_part(conn: Connection, job: Job, asks: Connection) -> None:
    writes = None if job.dry_run else job.store
    writer = shard_writer(writes, job.size, job.run_id, first_index=job.first_shard)
    try:
        duplicates: DuplicateIds = conn.recv()
        reader = read_manifest(
            job.manifest,
            table=job.table,
            default_model=job.settings.default_model,
            strict=job.strict,
            resolve_input=_InputsFromFirst(asks) if job.proxy_inputs else None,
            settings=job.settings,
            batch_size=job.batch_size,
            duplicates=duplicates,
        )
        keys = _KeysOfFirst(asks)
        planner = Planner(Plan(run_id=job.run_id), keys, writer, keep_requests=True)
        with writer:
            for block in reader.blocks(start=job.start):
                planner.take(block)
        assert planner.requests is not None
        requests = pa.concat_tables([REQUEST_COUNTS.empty_table(), *planner.requests])
        plan = planner.plan
        part = Part(
            rows_read=plan.rows_read,
            deduplicated=plan.deduplicated,
            folded=plan.folded,
            shorts=b"".join(planner.seen),
            aliases=dict(planner.aliases),
            shard_keys=writer.shard_keys if writes is not None else [],
            shards=writer.shards,
            rejects=planner.rejects,
            requests=requests,
        )
        del planner.seen, planner.requests
    except BaseException as exc:  # reported to the first process
        conn.send(("error", _portable(exc)))
        return
    conn.send(("part", part))
    del part
    try:
        order = conn.recv()
    except EOFError:
        return
    if order != "commit" or writes is None:
        return
    try:
        data = dedup_part(writes, planner.dedup, run_id=job.run_id, settings=job.settings)
        uri = put_dedup_part(writes, data, run_id=job.run_id, label=SECOND_LABEL)
    except BaseException as exc:  # reported to the first process
        conn.send(("error", _portable(exc)))
        return
    conn.send(("done", uri))


def _portable(
    exc: BaseException, *, note: str | None = "raised in the plan's second process"
) -> BaseException:
    """``exc`` as it can cross to the other process, with ``note`` and its traceback as a
    note; a PlanHelperError naming it when it does not pickle."""
    try:
        if note is not None:
            where = "".join(traceback.format_exception(exc)).rstrip()
            exc.add_note(f"{note}:\n{where}")
        copy = pickle.loads(pickle.dumps(exc))  # noqa: S301 - bytes made on the line
    except Exception:  # any pickling failure
        return PlanHelperError(f"the plan's second process failed: {type(exc).__name__}: {exc}")
    assert isinstance(copy, BaseException)
    return copy
