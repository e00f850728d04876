"""The manifest reader: a manifest streamed in record batches, every row validated.

A manifest is a Parquet file (or a folder of Parquet part files, as Spark and DuckDB write
them), local or on S3 (``qwbatch.manifest.files``), with one render request per row; its
columns are described in ``qwbatch.manifest.schema``. Opening a reader checks the files'
schemas and finds repeated ids (``qwbatch.manifest.duplicates``); iterating yields a
:class:`ManifestBatch` of requests and rejects per record batch, each row checked by
``qwbatch.manifest.row_checker``, and :meth:`ManifestReader.blocks` yields the column-wise
:class:`CheckedBlock` values the streaming plan takes. ``strict=True`` makes the first batch
holding a bad row raise ``ManifestError`` instead (message: its first few rejects).

**Speed.** Work is column-wise per record batch (``qwbatch.manifest.columns`` turns each Arrow
column into Python cells), then one plain function call per row checks the cells and builds
the RenderRequest and its key; no model object per row. ``bench/bench_manifest.py`` measures
a 1,000,000-row read.
"""

from __future__ import annotations

import dataclasses
import gc
import os
from collections.abc import Generator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import pyarrow as pa
import pyarrow.parquet as pq

from qwbatch.core.errors import ConfigError, ManifestError
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.core.types import RenderRequest
from qwbatch.manifest.columns import COERCE
from qwbatch.manifest.duplicates import DuplicateIds, duplicate_candidates, first_rows
from qwbatch.manifest.files import RemoteManifestInputs, is_remote, manifest_files
from qwbatch.manifest.rejects import Reject
from qwbatch.manifest.resolvers import InputResolver, LocalInputResolver, PrefetchingResolver
from qwbatch.manifest.row_checker import RowChecker
from qwbatch.manifest.schema import check_schema, open_parquet
from qwbatch.manifest.vector import Block, FastRows, check_block

#: Rejects quoted in a strict-mode ManifestError.
STRICT_REASONS_SHOWN: Final = 5
_IMAGES_CELL: Final = list(COERCE).index("input_images")  # its cells' place in a batch
_MODEL_CELL: Final = list(COERCE).index("model")
_MODELS_CELL: Final = list(COERCE).index("models")


@dataclass(frozen=True, slots=True)
class ManifestBatch:
    """The outcome of one record batch: rows ``first_row`` … ``first_row + num_rows - 1``."""

    first_row: int
    num_rows: int
    requests: list[RenderRequest]
    rejects: list[Reject]


@dataclass(frozen=True, slots=True)
class CheckedBlock:
    """One record batch read column-wise (``ManifestReader.blocks``): rows ``first_row`` …
    ``first_row + num_rows - 1``. ``fast`` holds the accepted rows the vectorised checks
    took (``qwbatch.manifest.vector.Block``), ``requests`` the accepted rows the row
    checker took, ``rejects`` the refused ones."""

    first_row: int
    num_rows: int
    fast: pa.Table
    #: The same rows as ``fast``, as Python lists (None when there are none).
    rows: FastRows | None
    requests: list[RenderRequest]
    rejects: list[Reject]


@dataclass(slots=True)
class ManifestSummary:
    """Counts for one read, updated as batches are yielded."""

    path: str
    #: Rows in the manifest according to the Parquet footers.
    total_rows: int
    #: Manifest-level remarks (ignored columns), each reported once.
    warnings: list[str] = field(default_factory=list)
    rows_read: int = 0
    accepted: int = 0
    rejected: int = 0
    batches: int = 0


def batch_starts(file_rows: list[int], batch_size: int) -> list[int]:
    """The rows a reader's record batches start at, for files of ``file_rows`` rows read
    in batches of ``batch_size`` (each file's batches start at its first row)."""
    starts: list[int] = []
    offset = 0
    for rows in file_rows:
        starts.extend(range(offset, offset + rows, batch_size))
        offset += rows
    return starts


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while one batch is checked (or a plan is made).

    Each row allocates a dozen container objects and none of them forms a cycle, yet every
    700 allocations start a collection that walks the young objects, and full collections
    walk everything the caller keeps: about a fifth of the reader's time, measured. Reference
    counting still frees everything; the collector resumes after the batch.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class ManifestReader:
    """Streams a manifest as ManifestBatch values; see ``read_manifest``.

    Opening checks the files and schema (raising ManifestError) and runs the duplicate-id
    pass; iterating reads ``batch_size`` rows at a time. Use as an iterator, or as a context
    manager to close the current file early.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table: ModelTable,
        default_model: str,
        batch_size: int = 65536,
        strict: bool = False,
        resolve_input: InputResolver | None = None,
        settings: Settings | None = None,
        duplicates: DuplicateIds | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if default_model not in table:
            raise ConfigError(table.unknown_message(default_model))
        remote = is_remote(path)
        self.path: Path | str = str(path) if remote else Path(path)
        self.strict = strict
        self._batch_size = batch_size
        self._files = manifest_files(path, settings=settings)
        self._columns: list[list[str]] = []
        #: Rows of each file, from its footer.
        self.file_rows: list[int] = []
        warnings: list[str] = []
        total = 0
        for file in self._files:
            parquet = open_parquet(file)
            try:
                present, file_warnings = check_schema(parquet.schema_arrow, file)
                self.file_rows.append(parquet.metadata.num_rows)
                total += parquet.metadata.num_rows
            finally:
                parquet.close()
            self._columns.append(present)
            warnings.extend(w for w in file_warnings if w not in warnings)
        self.summary = ManifestSummary(path=str(self.path), total_rows=total, warnings=warnings)
        self._resolver = resolve_input or (
            RemoteManifestInputs(str(path)) if remote else LocalInputResolver(Path(path).parent)
        )
        if duplicates is None:
            duplicates = DuplicateIds(duplicate_candidates(self._files))
        self._checker = RowChecker(
            table,
            default_model,
            self._resolver,
            duplicates,
            settings.default_target_size if settings is not None else None,
        )
        #: ``--models`` / ``QWBATCH_MODELS``: every row renders on each of these (a row's own
        #: ``models`` cell wins), as separate requests with ids ``ID@MODEL``.
        self._models: tuple[str, ...] = tuple(settings.models) if settings is not None else ()
        self._batches = self._read()

    @property
    def warnings(self) -> list[str]:
        """Manifest-level remarks, such as ignored unknown columns."""
        return self.summary.warnings

    @property
    def batch_size(self) -> int:
        return self._batch_size

    def duplicates(self) -> DuplicateIds:
        """The repeated ids and the row each is first seen at (reads the ids again when
        there are any): hand them to a reader of a later part of the manifest."""
        candidates = self._checker.candidates
        return DuplicateIds(candidates, first_rows(self._files, candidates))

    def batch_starts(self) -> list[int]:
        """The rows a record batch starts at: where :meth:`blocks` may start or stop."""
        return batch_starts(self.file_rows, self._batch_size)

    def __iter__(self) -> ManifestReader:
        return self

    def __next__(self) -> ManifestBatch:
        return next(self._batches)

    def __enter__(self) -> ManifestReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading and release the open file."""
        self._batches.close()

    def collect(self) -> tuple[list[RenderRequest], list[Reject]]:
        """Read the rest of the manifest into two lists (for small manifests and tests)."""
        requests: list[RenderRequest] = []
        rejects: list[Reject] = []
        for batch in self:
            requests.extend(batch.requests)
            rejects.extend(batch.rejects)
        return requests, rejects

    def _read(self) -> Generator[ManifestBatch, None, None]:
        for record_batch, offset in self._record_batches():
            yield self._check_batch(record_batch, offset)

    def _check_batch(self, record_batch: pa.RecordBatch, offset: int) -> ManifestBatch:
        rows = record_batch.num_rows
        requests, rejects = self._check_rows(record_batch, range(offset, offset + rows))
        self._count(rows, len(requests), rejects, offset)
        return ManifestBatch(first_row=offset, num_rows=rows, requests=requests, rejects=rejects)

    def _check_rows(
        self, record_batch: pa.RecordBatch, row_numbers: Iterable[int]
    ) -> tuple[list[RenderRequest], list[Reject]]:
        """Check the rows of ``record_batch`` one by one (numbered ``row_numbers``)."""
        rows = record_batch.num_rows
        names = set(record_batch.schema.names)
        cells: list[Iterable[Any]] = [
            coerce(record_batch.column(name)) if name in names else repeat(None, rows)
            for name, coerce in COERCE.items()
        ]
        if "input_images" in names and isinstance(self._resolver, PrefetchingResolver):
            self._resolver.prefetch(
                uri for cell in cells[_IMAGES_CELL] if isinstance(cell, tuple) for uri in cell
            )
        requests: list[RenderRequest] = []
        rejects: list[Reject] = []
        check = self._checker.check
        with gc_paused():
            for row, values in zip(row_numbers, zip(*cells, strict=True), strict=True):
                own = values[_MODELS_CELL]
                on_models: tuple[str, ...] = own if isinstance(own, tuple) else self._models
                if on_models:
                    self._check_on_models(row, values, on_models, requests, rejects)
                    continue
                outcome = check(row, *values)
                if isinstance(outcome, Reject):
                    rejects.append(outcome)
                else:
                    requests.append(outcome)
        return requests, rejects

    def _check_on_models(
        self,
        row: int,
        values: tuple[Any, ...],
        names: tuple[str, ...],
        requests: list[RenderRequest],
        rejects: list[Reject],
    ) -> None:
        """One row on each of ``names``: a request per model, id ``ID@MODEL`` (the compare
        sheet's line is the ID, its column the model), each checked against its model."""
        cells = list(values)
        for name in names:
            cells[_MODEL_CELL] = name
            outcome = self._checker.check(row, *cells)
            if isinstance(outcome, Reject):
                row_id = f"{outcome.row_id}@{name}" if outcome.row_id is not None else None
                rejects.append(dataclasses.replace(outcome, row_id=row_id))
            else:
                requests.append(dataclasses.replace(outcome, row_id=f"{outcome.row_id}@{name}"))

    def _count(self, rows: int, accepted: int, rejects: list[Reject], offset: int) -> None:
        """Count one batch in the summary; in strict mode, refuse it if it has rejects."""
        summary = self.summary
        summary.rows_read += rows
        summary.accepted += accepted
        summary.rejected += len(rejects)
        summary.batches += 1
        if self.strict and rejects:
            shown = "; ".join(map(str, rejects[:STRICT_REASONS_SHOWN]))
            more = len(rejects) - STRICT_REASONS_SHOWN
            shown += f"; and {more} more" if more > 0 else ""
            raise ManifestError(
                f"manifest {self.path} refused (strict): {len(rejects)} bad row(s) in rows "
                f"{offset}–{offset + rows - 1}: {shown}"
            )

    def blocks(self, start: int = 0, stop: int | None = None) -> Iterator[CheckedBlock]:
        """The manifest as CheckedBlock values: the column-wise path (``manifest_vector``)
        for the common rows, the row checker for the rest. Use instead of iterating.

        ``start`` and ``stop`` (rows; each one of :meth:`batch_starts`, or ``stop`` None for
        the end) read a part of the manifest in the same batches as a whole read."""
        candidates = pa.array(sorted(self._checker.candidates), pa.string())
        for record_batch, offset in self._record_batches(start, stop):
            rows = record_batch.num_rows
            block = check_block(record_batch, offset, self._checker.vector_setting, candidates)
            if self._models:  # every row renders on several models: the row checker's work
                block = Block(fast=block.fast.slice(0, 0), slow=list(range(rows)), rows=None)
            requests: list[RenderRequest] = []
            rejects: list[Reject] = []
            if block.slow:
                slow = record_batch.take(pa.array(block.slow, pa.int64()))
                requests, rejects = self._check_rows(slow, (offset + i for i in block.slow))
            self._count(rows, block.fast.num_rows + len(requests), rejects, offset)
            yield CheckedBlock(offset, rows, block.fast, block.rows, requests, rejects)

    def _record_batches(
        self, start: int = 0, stop: int | None = None
    ) -> Generator[tuple[pa.RecordBatch, int], None, None]:
        """Record batches and the row each starts at, from row ``start`` to ``stop``."""
        if start or stop is not None:
            starts = self.batch_starts()
            for bound in (start, stop):
                if bound is not None and bound not in starts and bound != self.summary.total_rows:
                    raise ValueError(f"row {bound} is not where a batch starts")
        first_row = 0
        for file, present, rows in zip(self._files, self._columns, self.file_rows, strict=True):
            if first_row + rows <= start:  # wholly before the part asked for
                first_row += rows
                continue
            if stop is not None and first_row >= stop:
                return
            offset = max(first_row, start)
            parquet = open_parquet(file)
            try:
                batches = _batches_from(parquet, offset - first_row, self._batch_size, present)
                while True:
                    if stop is not None and offset >= stop:
                        return
                    try:
                        record_batch = next(batches)
                    except StopIteration:
                        break
                    except (OSError, pa.ArrowException) as exc:
                        raise ManifestError(f"cannot read manifest {file}: {exc}") from exc
                    yield record_batch, offset
                    offset += record_batch.num_rows
            finally:
                parquet.close()
            first_row += rows


def _batches_from(
    parquet: pq.ParquetFile, row: int, size: int, columns: list[str]
) -> Iterator[pa.RecordBatch]:
    """``parquet``'s record batches of ``size`` rows from ``row`` (a multiple of ``size``):
    the batches a read from its first row gives from there on."""
    if row == 0:
        whole: Iterator[pa.RecordBatch] = parquet.iter_batches(batch_size=size, columns=columns)
        return whole
    group, group_row = 0, 0
    meta = parquet.metadata
    while group_row + meta.row_group(group).num_rows <= row:
        group_row += meta.row_group(group).num_rows
        group += 1
    groups = range(group, meta.num_row_groups)
    batches = parquet.iter_batches(batch_size=size, row_groups=groups, columns=columns)
    skip = row - group_row
    return batches if skip == 0 else _rebatched(batches, skip, size)


def _rebatched(batches: Iterable[pa.RecordBatch], skip: int, size: int) -> Iterator[pa.RecordBatch]:
    """``batches`` without their first ``skip`` rows, cut again into batches of ``size``."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        if skip:
            if batch.num_rows <= skip:
                skip -= batch.num_rows
                continue
            batch, skip = batch.slice(skip), 0
        pending.append(batch)
        held += batch.num_rows
        while held >= size:
            whole = pa.Table.from_batches(pending).combine_chunks()
            yield from whole.slice(0, size).to_batches()
            rest = whole.slice(size)
            pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield from pa.Table.from_batches(pending).combine_chunks().to_batches()


def read_manifest(
    path: str | os.PathLike[str],
    *,
    table: ModelTable,
    default_model: str,
    batch_size: int = 65536,
    strict: bool = False,
    resolve_input: InputResolver | None = None,
    settings: Settings | None = None,
    duplicates: DuplicateIds | None = None,
) -> ManifestReader:
    """Read, validate and normalise a manifest, ``batch_size`` rows at a time.

    Returns an iterator of ManifestBatch (``.requests`` and ``.rejects`` per record batch);
    ``reader.summary`` counts rows as they are read and ``reader.warnings`` lists ignored
    columns. Raises ManifestError at once when the manifest cannot be used at all (unreadable,
    no ``id`` or ``prompt`` column, a column of an unusable type), and ConfigError when
    ``default_model`` is not in ``table``. With ``strict=True``, the first batch holding a
    bad row raises ManifestError naming its first rejects; batches yielded before it are
    valid but the caller should discard them (plan reads the whole manifest before sending).

    ``resolve_input`` maps an input-image URI to the sha256 hex of its bytes; the default is
    ``LocalInputResolver(path.parent)``: the folder holding the manifest file (or holding the
    folder of part files). For an ``s3://`` manifest it is ``RemoteManifestInputs``, which
    rejects rows with input images for now (``qwbatch.manifest.files``).

    ``path`` is a local file or folder, or ``s3://bucket/key.parquet`` or ``s3://bucket/folder/``
    (read in ranges; see ``qwbatch.manifest.files``). ``settings`` configure the S3 client
    (endpoint, region, addressing style); the default is ``Settings()`` from the environment.

    >>> reader = read_manifest("m.parquet", table=ModelTable.load(),  # doctest: +SKIP
    ...                        default_model="qwen-image-2.0")
    >>> for batch in reader:  # doctest: +SKIP
    ...     plan.add(batch.requests); rejects.extend(batch.rejects)
    """
    return ManifestReader(
        path,
        table=table,
        default_model=default_model,
        batch_size=batch_size,
        strict=strict,
        resolve_input=resolve_input,
        settings=settings,
        duplicates=duplicates,
    )
