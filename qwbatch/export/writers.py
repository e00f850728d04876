"""One writer class per export format (img2dataset's ``*SampleWriter``): samples in, shards out.

A writer fills one shard of one split at a time: :meth:`SampleWriter.open`, a
:meth:`~SampleWriter.write` per sample (its image bytes and record), then
:meth:`~SampleWriter.close`, which stores the shard whole in one ``put`` (a reader never sees
half a shard) and returns its key. :meth:`~SampleWriter.finish` writes what describes the
whole export (a dataset card, an index) once every shard is stored. Memory: one shard.

- :class:`HfSampleWriter`: ``data/{split}-{NNNNNN}.parquet``, an ``image`` column in the
  Hugging Face ``Image`` layout (``{bytes, path}``, bytes embedded) beside the record's
  columns, the features in the schema metadata and in ``README.md`` (:mod:`.card`);
- :class:`WebDatasetSampleWriter`: ``{split}-{NNNNNN}.tar`` of ``{key}.png``, ``{key}.txt``
  (the text) and ``{key}.json`` (the record);
- :class:`FilesSampleWriter`: ``{name}.png`` (under ``{split}/`` when the export is split)
  or the path a ``--path-template`` gives (:mod:`.paths`), and ``index.csv``: a shard is a
  batch of files and its lines of the index; :func:`write_zip` packs them into one zip.
"""

from __future__ import annotations

import csv
import io
import json
import re
import tarfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from qwbatch.export import card
from qwbatch.export.paths import PathTemplate
from qwbatch.export.samples import RECORD_FIELDS, Sample
from qwbatch.storage.stores import ObjectStore

#: Where a writer keeps what it needs beyond its shards (the files format's index lines).
WORK_PREFIX = "_qwbatch-export/"


class SampleWriter(ABC):
    """Writes samples into shards of one format; see the module docstring."""

    #: The format's name, as ``--format`` takes it.
    name: ClassVar[str]

    def __init__(
        self,
        store: ObjectStore,
        *,
        with_text: bool,
        split_folders: bool,
        path_template: PathTemplate | None = None,
    ) -> None:
        self.store = store
        #: Where the ``files`` format puts each image (other formats ignore it).
        self.path_template = path_template
        #: Whether the text differs from the prompt (``--caption-column``): then a column.
        self.with_text = with_text
        self.split_folders = split_folders
        self.split = ""
        self.number = 0

    def open(self, split: str, number: int) -> None:
        """Start shard ``number`` of ``split``."""
        self.split, self.number = split, number

    @abstractmethod
    def write(self, sample: Sample, image: bytes) -> None:
        """Add one sample (its PNG bytes) to the open shard."""

    @abstractmethod
    def close(self) -> str:
        """Store the open shard whole; its key."""

    def finish(self, splits: Sequence[str]) -> None:
        """Write what describes the whole export (after every shard)."""
        del splits

    #: Every shard's key starts with this and ends with ``-NNNNNN`` + :attr:`suffix`.
    folder: ClassVar[str] = ""
    suffix: ClassVar[str]

    def shard_key(self, split: str, number: int) -> str:
        """The key of shard ``number`` of ``split``."""
        return f"{self.folder}{split}-{number:06d}{self.suffix}"

    def is_shard(self, key: str) -> bool:
        """Whether ``key`` is named like one of this format's shards."""
        rest = key.removeprefix(self.folder)
        return (
            key.startswith(self.folder)
            and "/" not in rest
            and re.search(rf"-\d{{6}}{re.escape(self.suffix)}\Z", rest) is not None
        )


class HfSampleWriter(SampleWriter):
    """Hugging Face Parquet shards with an ``Image`` column and a dataset card."""

    name = "hf"
    folder = "data/"
    suffix = ".parquet"
    #: Samples per Parquet row group (the datasets library reads a row group at a time).
    ROW_GROUP = 64

    def open(self, split: str, number: int) -> None:
        super().open(split, number)
        self._schema = card.arrow_schema(with_text=self.with_text)
        self._sink = io.BytesIO()
        self._writer = pq.ParquetWriter(self._sink, self._schema, compression="none")
        self._rows: list[dict[str, Any]] = []

    def write(self, sample: Sample, image: bytes) -> None:
        row = sample.metadata()
        del row["split"]
        row["tags"] = [{"key": k, "value": v} for k, v in sorted(row["tags"].items())]
        row["image"] = {"bytes": image, "path": f"{sample.name}.png"}
        if self.with_text:
            row["text"] = sample.text
        self._rows.append(row)
        if len(self._rows) >= self.ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self._schema))
            self._rows = []

    def close(self) -> str:
        self._flush()
        self._writer.close()
        key = self.shard_key(self.split, self.number)
        self.store.put(key, self._sink.getvalue(), content_type="application/x-parquet")
        self._sink = io.BytesIO()
        return key

    def finish(self, splits: Sequence[str]) -> None:
        text = card.readme(splits, with_text=self.with_text)
        self.store.put("README.md", text.encode(), content_type="text/markdown")


class WebDatasetSampleWriter(SampleWriter):
    """WebDataset tar shards: ``{key}.png``, ``{key}.txt``, ``{key}.json`` per sample."""

    name = "webdataset"
    suffix = ".tar"

    def open(self, split: str, number: int) -> None:
        super().open(split, number)
        self._sink = io.BytesIO()

    def _add(self, name: str, data: bytes) -> None:
        self._sink.write(tar_header(name, len(data)))
        self._sink.write(data)
        self._sink.write(b"\0" * (-len(data) % 512))

    def write(self, sample: Sample, image: bytes) -> None:
        key = sample.key
        self._add(f"{key}.png", image)
        self._add(f"{key}.txt", sample.text.encode())
        self._add(f"{key}.json", sample.metadata_json().encode())

    def close(self) -> str:
        self._sink.write(b"\0" * 1024)  # the end-of-archive marker: two zero blocks
        key = self.shard_key(self.split, self.number)
        self.store.put(key, self._sink.getvalue(), content_type="application/x-tar")
        self._sink = io.BytesIO()
        return key


class FilesSampleWriter(SampleWriter):
    """A folder to browse: ``{name}.png`` per image and an ``index.csv`` of the records."""

    name = "files"
    folder = f"{WORK_PREFIX}index/"
    suffix = ".csv"
    INDEX = "index.csv"
    COLUMNS = ("file", "split", "text", *RECORD_FIELDS)

    def open(self, split: str, number: int) -> None:
        super().open(split, number)
        self._lines = io.StringIO()
        self._csv = csv.writer(self._lines)

    def _folder(self, split: str) -> str:
        return f"{split}/" if self.split_folders else ""

    def file(self, sample: Sample) -> str:
        """Where ``sample``'s image goes: the template's path, else ``[{split}/]{name}.png``."""
        if self.path_template is not None:
            return self.path_template.path(sample)
        return f"{self._folder(sample.split)}{sample.name}.png"

    def write(self, sample: Sample, image: bytes) -> None:
        file = self.file(sample)
        self.store.put(file, image, content_type="image/png", durable=False)
        record = sample.metadata()
        record["tags"] = json.dumps(record["tags"], ensure_ascii=False, sort_keys=True)
        self._csv.writerow(
            [file, sample.split, sample.text, *(record[name] for name in RECORD_FIELDS)]
        )

    def close(self) -> str:
        key = self.shard_key(self.split, self.number)
        self.store.put(key, self._lines.getvalue().encode(), content_type="text/csv")
        return key

    def finish(self, splits: Sequence[str]) -> None:
        """``index.csv``: the header, then each shard's lines in shard order."""
        sink = io.StringIO()
        csv.writer(sink).writerow(self.COLUMNS)
        for key in sorted(k for k in self.store.list(self.folder) if self.is_shard(k)):
            sink.write(self.store.get(key).decode())
        self.store.put(self.INDEX, sink.getvalue().encode(), content_type="text/csv")


def tar_header(name: str, size: int) -> bytes:
    """A tar member's header: a regular file, mode 644, owner 0, time 0 (the same samples
    give the same bytes). POSIX ustar for names of up to 100 bytes (every sample name, made
    safe, fits), else the standard library's PAX header. Written by hand for speed:
    ``tarfile.addfile`` costs about 50 µs a member, half of a WebDataset export's time."""
    raw = name.encode()
    if len(raw) > 100 or size >= 8**11:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, 0
        return info.tobuf(format=tarfile.PAX_FORMAT)
    header = bytearray(512)
    header[0 : len(raw)] = raw
    header[100:108] = b"0000644\0"
    header[108:116] = b"0000000\0"
    header[116:124] = b"0000000\0"
    header[124:136] = b"%011o\0" % size
    header[136:148] = b"00000000000\0"
    header[148:156] = b" " * 8  # the checksum counts its own field as spaces
    header[156:157] = b"0"
    header[257:265] = b"ustar\x0000"
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


WRITERS: dict[str, type[SampleWriter]] = {
    writer.name: writer for writer in (HfSampleWriter, WebDatasetSampleWriter, FilesSampleWriter)
}
