"""A large manifest planned in two processes: the first part of its rows here, the rest in a
second Python process, then merged into the plan one process would have made.

Planning is mostly Python (a sha256 and a few lookups per row) and the GIL keeps it on one
core whatever the threads; a second process plans the other part of the rows on the other
core. A manifest of at least ``Settings.plan_split_rows`` rows (and more than one record
batch) into a local or S3 store, or a dry run, is cut at the record batch nearest its
middle (:func:`split_row`). Each process reads, checks and keys its part, writes the shards
of its new requests and builds the catalog part of its deduplicated rows. The catalog's key
set is built once, here: the second process asks which of a block's keys it holds (one round
trip a block), so the set is not held twice. The second process's shards are numbered from
past the most the first part could write (``ceil(first part's rows / shard size)``), so
numbers may skip.

The merge (:func:`plan_in_two`) then does what one process would have done across the cut:

- a request of the second part whose key the first part already planned becomes an alias
  of that request (after the first part's own aliases of it, as in manifest order), with
  the second part's aliases of it; the second part's shards are rewritten without it (a
  shard left empty is deleted), so shards may hold fewer than the shard size;
- repeated row ids: the second process knows, before it reads, the row each repeated id
  is first seen at (``ManifestReader.duplicates``), so a repeat is refused wherever its
  first occurrence is;
- counts and the estimate are summed, the second part's folded requests left out; rejects
  are written in manifest order; the first bad batch in manifest order refuses a strict
  plan, with the message one process would give (the cut is at a batch boundary).

The catalog rows of deduplicated requests go into two parts, ``part-<run>-plan.parquet``
(the first part's rows) and ``part-<run>-plan_2.parquet``, stored once the shards are final.
The second process is started with ``python -c`` (not ``multiprocessing``, whose ``spawn``
re-runs an unguarded ``__main__`` script), talks over socket pairs, and resolves edit inputs
through the first process's resolver (one cache, one set of statistics). Any failure, in
either process, kills the second process and deletes the shards (and parts) both wrote.
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

from qwbatch.catalog import key_set as catalog_keys
from qwbatch.catalog import table as catalog
from qwbatch.core.errors import PermanentError, PlanHelperError, QwBatchError
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.core.types import Alias
from qwbatch.manifest import (
    DuplicateIds,
    InputDigest,
    InputResolver,
    PrefetchingResolver,
    Reject,
    batch_starts,
    gc_paused,
    manifest_rows,
    read_manifest,
    rejects_table,
)
from qwbatch.plan.model import Plan
from qwbatch.plan.shards import decode_shard, write_shard
from qwbatch.plan.stream import (
    REQUEST_COUNTS,
    KeySet,
    Planner,
    attach_aliases,
    dedup_part,
    delete_keys,
    planning_pool,
    price,
    put_dedup_part,
    shard_writer,
    with_aliases,
)
from qwbatch.storage import layout
from qwbatch.storage.stores import LocalStore, ObjectStore, S3Store, make_durable

#: Label of the second process's catalog part of deduplicated rows.
SECOND_LABEL = "plan_2"
_SHORT = 16  # bytes of a short key (catalog_keys.short_key)


def split_row(
    manifest: str | Path, store: ObjectStore | None, settings: Settings, batch_size: int
) -> int | None:
    """The row the second process would start at (the batch start nearest the middle), or
    None when the plan stays in one process: fewer rows than ``settings.plan_split_rows``,
    one batch, or a store the second process cannot open (only local and S3 stores)."""
    if settings.plan_split_rows < 1:
        return None
    if store is not None and type(store) not in (LocalStore, S3Store):
        return None
    try:
        file_rows = manifest_rows(manifest, settings=settings)
    except QwBatchError:
        return None  # the reader says why
    total = sum(file_rows)
    if total < settings.plan_split_rows:
        return None
    starts = [row for row in batch_starts(file_rows, batch_size) if row > 0]
    if not starts:
        return None
    return min(starts, key=lambda row: abs(2 * row - total))


@dataclass(frozen=True, slots=True)
class _Job:
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
class _Part:
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


def plan_in_two(
    manifest: str | Path,
    start: int,
    plan: Plan,
    *,
    store: ObjectStore | None,
    dry_run: bool,
    settings: Settings,
    table: ModelTable,
    size: int,
    strict: bool,
    batch_size: int,
    resolve_input: InputResolver | None,
) -> Plan:
    """Plan rows before ``start`` here and the rest in a second process; merge (see the
    module docstring). ``plan`` is the empty plan to fill."""
    run_id = plan.run_id
    writes = None if dry_run else store
    first_shard = -(-start // size)
    job = _Job(
        manifest=manifest,
        store=store,
        dry_run=dry_run,
        settings=settings,
        table=table,
        run_id=run_id,
        strict=strict,
        size=size,
        batch_size=batch_size,
        start=start,
        first_shard=first_shard,
        proxy_inputs=resolve_input is not None,
    )
    writer = shard_writer(writes, size, run_id)
    helper: _Helper | None = None
    try:
        # Started first: its interpreter starts while this one reads the ids and the catalog.
        helper = _Helper(job, resolve_input)
        reader = read_manifest(
            manifest,
            table=table,
            default_model=settings.default_model,
            strict=strict,
            resolve_input=resolve_input,
            settings=settings,
            batch_size=batch_size,
        )
        helper.send(reader.duplicates())
        present = KeySet(catalog_keys.present_keys(store))
        helper.serve_keys(present)
        planner = Planner(plan, present, writer)
        with writer:
            for block in reader.blocks(stop=start):
                planner.take(block)
        part = helper.result()
        del present, planner.present
        _merge(planner, part, writes, size=size, run_id=run_id, first_shard=first_shard)
        del planner.seen
        if writes is not None and planner.aliases:
            attach_aliases(writes, run_id, size, writer.shard_keys, planner.aliases)
        make_durable(writes)
    except BaseException:
        _abandon(helper, writes, writer.shard_keys, run_id, first_shard)
        raise
    second_keys = [k for i, k in enumerate(part.shard_keys) if i not in part.emptied]
    plan.shard_keys = [*writer.shard_keys, *second_keys] if writes is not None else []
    plan.shards = writer.shards + part.shards - len(part.emptied)
    plan.rejected = len(planner.rejects)
    if writes is None:
        price(plan, planner.tally, settings, table)
        helper.finish(commit=False)
        return plan
    try:
        helper.commit()
        plan.rejects_uri = catalog.write_rejects(
            writes, rejects_table(planner.rejects), run_id=run_id
        )
        first = put_dedup_part(
            writes, dedup_part(writes, planner, run_id=run_id, settings=settings), run_id=run_id
        )
        # After the part: its cost lines (one per tag label) are not held while it is built.
        price(plan, planner.tally, settings, table)
        second = helper.finish(commit=True)
    except BaseException:
        _abandon(helper, writes, plan.shard_keys, run_id, first_shard)
        for label in ("plan", SECOND_LABEL):
            writes.delete(layout.part_key(run_id, label))
        raise
    plan.dedup_part_uris = [uri for uri in (first, second) if uri]
    plan.dedup_part_uri = plan.dedup_part_uris[0] if plan.dedup_part_uris else None
    return plan


def _merge(
    planner: Planner,
    part: _Part,
    writes: ObjectStore | None,
    *,
    size: int,
    run_id: str,
    first_shard: int,
) -> None:
    """Fold the second part into the first part's plan: its requests the first part already
    planned become aliases there, its own aliases are attached, its shards rewritten."""
    plan, seen = planner.plan, planner.seen
    count = len(part.shorts) // _SHORT
    shorts = (part.shorts[i : i + _SHORT] for i in range(0, count * _SHORT, _SHORT))
    places = list(map(seen.get, shorts))
    #: second part's place → the first part's place of the same request
    folded = {j: place for j, place in enumerate(places) if place is not None}
    plan.rows_read += part.rows_read
    plan.deduplicated += part.deduplicated
    plan.folded += part.folded + len(folded)
    planner.rejects.extend(part.rejects)
    requests, part.requests, part.shorts = part.requests, REQUEST_COUNTS.empty_table(), b""
    if folded:
        requests = requests.filter(pa.array([place is None for place in places], pa.bool_()))
    planner.tally.add(requests)
    del requests, places
    touched = {j // size for j in (*folded, *part.aliases)}
    for index in sorted(touched):
        held = min(size, count - index * size)
        if sum(j in folded for j in range(index * size, index * size + held)) == held:
            part.emptied.add(index)
        if writes is None:
            continue
        key = part.shard_keys[index]
        kept = []
        for offset, item in enumerate(decode_shard(writes.get(key))):
            j = index * size + offset
            found = part.aliases.get(j, [])
            if j not in folded:
                with_aliases(item, found)
                kept.append(item)
                continue
            request = item.request
            alias = Alias(
                request.row_id,
                request.row_number,
                request.tags,
                request.input_images,
                request.input_notes,
            )
            planner.aliases[folded[j]].extend([(alias, request.priority), *found])
        if kept:
            write_shard(writes, run_id, first_shard + index, kept)
        else:
            writes.delete(key)


def _abandon(
    helper: _Helper | None,
    writes: ObjectStore | None,
    first_keys: list[str],
    run_id: str,
    first_shard: int,
) -> None:
    """After a failure: stop the second process, delete the shards both wrote."""
    if helper is not None:
        helper.kill()
    if writes is None:
        return
    delete_keys(writes, first_keys)
    prefix = layout.shards_prefix(run_id)
    for key in list(writes.list(prefix)):
        index = layout.shard_index(key.removeprefix(prefix))
        if index is not None and index >= first_shard:
            writes.delete(key)


class _Helper:
    """The second process, seen from the first: started at once, it plans its part while
    this process plans the first; :meth:`result` waits for its part. A thread answers its
    questions meanwhile (which keys the catalog has, edit inputs)."""

    def __init__(self, job: _Job, resolve_input: InputResolver | None) -> None:
        ours, theirs = socket.socketpair()
        asks, asked = socket.socketpair()
        fds = [theirs.fileno(), asked.fileno()]
        path = os.pathsep.join(entry or os.getcwd() for entry in sys.path)
        self.process = subprocess.Popen(  # noqa: S603 - this interpreter, our own module
            [sys.executable, "-c", "from qwbatch.plan.split import main; main()", *map(str, fds)],
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

    def result(self) -> _Part:
        """The second process's part of the plan (raising its error if it failed); it has
        no more questions about the catalog's keys after it."""
        part = self._receive()
        assert isinstance(part, _Part)
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
                    [payload[i : i + _SHORT] for i in range(0, len(payload), _SHORT)]
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
        job: _Job = conn.recv()
    except EOFError:
        return
    try:
        with gc_paused(), planning_pool():
            _plan_part(conn, job, asks)
    except (BrokenPipeError, ConnectionResetError, EOFError):
        return  # the first process is gone (it failed, or was killed): nothing to report to


def _plan_part(conn: Connection, job: _Job, asks: Connection) -> None:
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
        part = _Part(
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
        data = dedup_part(writes, planner, run_id=job.run_id, settings=job.settings)
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
