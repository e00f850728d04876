"""``export``: a DEST's images and catalog records → a dataset another library reads.

Streaming: samples come from the catalog's view a batch at a time, their images are read
a few at a time (``workers`` in flight, in order), and each split has one shard open; a
shard is stored whole once it holds ``shard_size_mb`` of images. Memory is one shard per
split plus the catalog's selected columns in Arrow, whatever the number of images.

Resumable: once a shard is stored, the names of its samples are recorded in
``_qwbatch-export/done/{split}-{NNNNNN}.txt``; a later export into the same target skips
every recorded sample and numbers its shards after the last recorded one, so re-running
writes only what is missing (new rows, or the shards an interrupted export had not
finished). A shard stored without its record (cut off in between) is deleted and its
samples written again. ``_qwbatch-export/export.json`` keeps the options that decide names,
splits and columns; an export into the same target with other such options is refused.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from qwbatch.catalog.view import parse_filters
from qwbatch.core.errors import ConfigError, ObjectNotFoundError, StorageError
from qwbatch.core.settings import Settings
from qwbatch.export.finals import write_zip
from qwbatch.export.paths import PathTemplate, check_paths
from qwbatch.export.samples import DEFAULT_STATUSES, TRAIN, VALIDATION, Sample, Selection
from qwbatch.export.writers import WORK_PREFIX, WRITERS, FilesSampleWriter, SampleWriter
from qwbatch.storage.layout import output_key
from qwbatch.storage.stores import ObjectStore, make_durable, open_store

log = logging.getLogger(__name__)

Format = Literal["hf", "webdataset", "files"]
FORMATS: tuple[Format, ...] = ("hf", "webdataset", "files")
DONE_PREFIX = f"{WORK_PREFIX}done/"
OPTIONS_KEY = f"{WORK_PREFIX}export.json"
ZIP_RECORD_KEY = f"{WORK_PREFIX}zip.json"
_DONE_NAME = re.compile(r"\A(.+)-(\d{6})\.txt\Z")
#: Images read ahead of the writer, per worker.
_AHEAD = 4


@dataclass(frozen=True, slots=True)
class ShardDone:
    """One stored shard (what ``on_shard`` is told): its key, split and sample count."""

    key: str
    split: str
    samples: int
    bytes: int


@dataclass(slots=True)
class ExportResult:
    """What an export did. Sizes in bytes, times in seconds."""

    target: str
    format: str
    #: Samples written by this call, and samples an earlier export had written already.
    exported: int = 0
    already: int = 0
    #: Image bytes written by this call.
    bytes: int = 0
    shards: list[str] = field(default_factory=list)
    #: (row id, reason) of selected rows whose image could not be read: left out.
    missing: list[tuple[str, str]] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: With ``zip``: whether ``finals.zip`` was written (False: it was current already).
    zipped: bool = False

    def lines(self) -> list[str]:
        """What ``qwbatch export`` prints."""
        rate = self.exported / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"exported {self.exported} images ({self.bytes / 1e6:.1f} MB) in "
            f"{len(self.shards)} shards to {self.target} ({self.format}, splits: "
            f"{', '.join(self.splits) or 'none'}) in {self.seconds:.1f} s ({rate:.0f} img/s)",
        ]
        if self.zipped:
            lines.append(f"wrote {self.target.rstrip('/')}/finals.zip")
        if self.already:
            lines.append(f"{self.already} images were exported before: not written again")
        for row_id, reason in self.missing[:20]:
            lines.append(f"  left out {row_id!r}: {reason}")
        if len(self.missing) > 20:
            lines.append(f"  … and {len(self.missing) - 20} more left out")
        return lines


def export(
    dest: str,
    to: str,
    *,
    format: Format = "hf",  # the CLI's --format, same name
    run: str | None = None,
    status: Sequence[str] = DEFAULT_STATUSES,
    filters: Iterable[str] = (),
    shard_size_mb: float = 256.0,
    caption_column: str | None = None,
    split_by: str | None = None,
    val_fraction: float = 0.0,
    workers: int = 8,
    settings: Settings | None = None,
    on_shard: Callable[[ShardDone], None] | None = None,
    approved_only: bool = False,
    path_template: str | None = None,
    zip: bool = False,  # the CLI's --zip, same name
) -> ExportResult:
    """Export the images of ``dest`` (a folder or ``s3://``) into ``to`` as ``format``.

    ``format``: ``hf`` (Parquet shards and a dataset card: ``datasets.load_dataset(to)``),
    ``webdataset`` (tar shards), ``files`` (PNGs named by row id and ``index.csv``); see
    ``docs/export.md``. The rows are the catalog's latest record of each row id (``run``:
    one run's, ``"latest"`` the newest run's) whose status is in ``status`` (by default
    ``succeeded`` and ``deduplicated``: every row with an image) and that match every
    ``FIELD=PATTERN`` of ``filters`` (as ``qwbatch report --filter``). ``shard_size_mb`` is
    the image megabytes (10⁶ bytes) per shard. ``caption_column`` (a catalog column or
    ``tag.NAME``; default the prompt) is the text. ``split_by`` (a column or ``tag.NAME``)
    names each row's split; else ``val_fraction`` of the rows, chosen by row id, go to
    ``validation``. ``workers`` images are read at once. ``on_shard`` is called after each
    shard is stored. ``approved_only`` keeps the images a review approved
    (``qwbatch review``). Re-running writes only what is missing (see the module docstring).
    ``files`` only: ``path_template`` places each image from its record
    (``"{tag.campaign}/{tag.channel}/{row_id}-{k}.png"``, :mod:`.paths`), and ``zip`` packs
    the export into ``finals.zip`` as well (:mod:`.finals`).

    Example::

        from qwbatch.export import export
        export("out", "dataset/", format="hf", val_fraction=0.05)
    """
    began = time.monotonic()
    if format not in WRITERS:
        raise ConfigError(f"unknown export format {format!r}: use one of {', '.join(FORMATS)}")
    if shard_size_mb <= 0:
        raise ConfigError("shard_size_mb must be positive")
    if (path_template is not None or zip) and format != "files":
        raise ConfigError("--path-template and --zip go with --format files")
    template = (
        None if path_template is None else PathTemplate(path_template, work_prefix=WORK_PREFIX)
    )
    settings = settings or Settings()
    source, target = open_store(dest, settings), open_store(to, settings)
    selection = Selection(
        run=run,
        statuses=tuple(status),
        filters=parse_filters(filters),
        caption_column=caption_column or "prompt",
        split_by=split_by,
        val_fraction=val_fraction,
        approved_only=approved_only,
    )
    table = selection.table(source)
    if template is not None:  # every path checked before anything is written
        check_paths(template, selection.samples(table))
    _check_options(target, format, selection, path_template)
    result = ExportResult(target=target.root_uri, format=format)
    done, numbers = _recorded(target)
    split_folders = split_by is not None or val_fraction > 0
    with_text = selection.caption_column != "prompt"

    def new_writer() -> SampleWriter:
        return WRITERS[format](
            target, with_text=with_text, split_folders=split_folders, path_template=template
        )

    _drop_stale(new_writer(), target, numbers)
    open_shards: dict[str, _OpenShard] = {}
    limit = int(shard_size_mb * 1_000_000)
    fresh = _not_done(selection.samples(table), done, result)
    for sample, image in _read_images(source, fresh, workers, result):
        shard = open_shards.get(sample.split)
        if shard is None:
            number = numbers.get(sample.split, -1) + 1
            numbers[sample.split] = number
            shard = open_shards[sample.split] = _OpenShard(new_writer(), sample.split, number)
        shard.add(sample, image)
        if shard.bytes >= limit:
            _store(shard, target, result, on_shard)
            del open_shards[sample.split]
    for shard in open_shards.values():
        _store(shard, target, result, on_shard)
    result.splits = _ordered(numbers)
    if result.splits:
        new_writer().finish(result.splits)
    if zip and result.splits:
        result.zipped = write_zip(target, index=FilesSampleWriter.INDEX, record_key=ZIP_RECORD_KEY)
    result.seconds = time.monotonic() - began
    return result


class _OpenShard:
    """A writer's open shard and what it holds so far."""

    def __init__(self, writer: SampleWriter, split: str, number: int) -> None:
        self.writer, self.split, self.number = writer, split, number
        self.names: list[str] = []
        self.bytes = 0
        writer.open(split, number)

    def add(self, sample: Sample, image: bytes) -> None:
        self.writer.write(sample, image)
        self.names.append(sample.name)
        self.bytes += len(image)


def _store(
    shard: _OpenShard,
    target: ObjectStore,
    result: ExportResult,
    on_shard: Callable[[ShardDone], None] | None,
) -> None:
    """Store the shard, then record its samples as done (in that order: see the module)."""
    key = shard.writer.close()
    make_durable(target)  # the files format's images were put without fsync
    record = f"{DONE_PREFIX}{shard.split}-{shard.number:06d}.txt"
    target.put(record, "\n".join(shard.names).encode(), content_type="text/plain")
    result.shards.append(key)
    result.exported += len(shard.names)
    result.bytes += shard.bytes
    if on_shard is not None:
        on_shard(ShardDone(key=key, split=shard.split, samples=len(shard.names), bytes=shard.bytes))


def _check_options(
    target: ObjectStore, format: str, selection: Selection, path_template: str | None
) -> None:
    """Record the options that decide names and columns; refuse others than recorded."""
    options: dict[str, object] = {
        "format": format,
        "caption_column": selection.caption_column,
        "split_by": selection.split_by,
        "val_fraction": selection.val_fraction,
    }
    if path_template is not None:  # absent, not null, so that older targets still match
        options["path_template"] = path_template
    try:
        recorded = json.loads(target.get(OPTIONS_KEY))
    except ObjectNotFoundError:
        target.put(OPTIONS_KEY, json.dumps(options).encode(), content_type="application/json")
        return
    if recorded != options:
        raise ConfigError(
            f"{target.root_uri} holds an export made with {recorded}; this one asks for "
            f"{options}: export into another target, or empty this one"
        )


def _recorded(target: ObjectStore) -> tuple[set[str], dict[str, int]]:
    """Names of the samples already exported, and each split's last shard number."""
    done: set[str] = set()
    numbers: dict[str, int] = {}
    for key in target.list(DONE_PREFIX):
        match = _DONE_NAME.match(key.removeprefix(DONE_PREFIX))
        if match is None:
            continue
        split, number = match.group(1), int(match.group(2))
        numbers[split] = max(numbers.get(split, -1), number)
        done.update(n for n in target.get(key).decode().split("\n") if n)
    return done, numbers


def _drop_stale(writer: SampleWriter, target: ObjectStore, numbers: dict[str, int]) -> None:
    """Delete shards stored after the last recorded one of their split (an export cut off
    between storing a shard and recording it): their samples are written again."""
    recorded = {
        writer.shard_key(split, number)
        for split, last in numbers.items()
        for number in range(last + 1)
    }
    for key in list(target.list(writer.folder)):
        if writer.is_shard(key) and key not in recorded:
            log.info("export: deleting %s, stored but never recorded as done", key)
            target.delete(key)


def _not_done(samples: Iterator[Sample], done: set[str], result: ExportResult) -> Iterator[Sample]:
    for sample in samples:
        if sample.name in done:
            result.already += 1
        else:
            yield sample


def _read_images(
    source: ObjectStore, samples: Iterator[Sample], workers: int, result: ExportResult
) -> Iterator[tuple[Sample, bytes]]:
    """Each sample with its image bytes, in order, ``workers`` reads in flight; a sample
    whose image cannot be read goes to ``result.missing`` with the reason, and the rest on."""

    def read(sample: Sample) -> bytes:
        return source.get(output_key(*sample.image_key))

    window: list[tuple[Sample, Future[bytes]]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="export") as pool:
        for sample in samples:
            window.append((sample, pool.submit(read, sample)))
            if len(window) >= workers * _AHEAD:
                yield from _take(window.pop(0), result)
        while window:
            yield from _take(window.pop(0), result)


def _take(
    pending: tuple[Sample, Future[bytes]], result: ExportResult
) -> Iterator[tuple[Sample, bytes]]:
    sample, future = pending
    try:
        yield sample, future.result()
    except (ObjectNotFoundError, StorageError) as exc:
        result.missing.append((sample.record["row_id"], f"image unreadable: {exc}"))


def _ordered(numbers: dict[str, int]) -> list[str]:
    """Splits with train first, validation second, then the rest by name."""
    rank = {TRAIN: 0, VALIDATION: 1}
    return sorted(numbers, key=lambda split: (rank.get(split, 2), split))
