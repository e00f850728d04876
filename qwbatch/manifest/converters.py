"""Manifests from spreadsheets: CSV and JSON Lines in, a validated Parquet manifest out.

Most people start from a spreadsheet. :func:`read_csv` and :func:`read_jsonl` turn a file into
a table of text cells (one column per header or key, in file order); :func:`convert` checks
it with the very reader a run uses (:func:`qwbatch.manifest.reader.read_manifest`: the same rules,
the same reasons) and writes the rows it accepts as a typed Parquet manifest
(``MANIFEST_SCHEMA``, plus any extra columns as text). Rejected rows are
returned with their reasons, numbered like a run's rejects: data rows from 0, in file order.

Cell formats (a CSV has only text; JSON values may be typed or text):

- empty CSV cells are null: the column's default applies;
- ``n``, ``seed``: integers (``2``); ``prompt_extend``, ``watermark``: ``true``/``false``/1/0;
- ``input_images``: one path, or a JSON array (``["a.png", "b.png"]``); paths are relative to
  the folder of the *output* Parquet file, as a run resolves them;
- ``tags``: ``campaign=autumn,sku=1001``, or a JSON object (``{"campaign": "autumn"}``).

Lines starting with ``#`` before a CSV's header, and anywhere in a JSON Lines file, are notes
(``qwbatch manifest template`` writes them) and are skipped, as are blank lines. Files are read
whole into memory: this is for spreadsheets, not for millions of rows (write Parquet for those).
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from qwbatch.core.errors import ManifestError
from qwbatch.core.model_table import ModelTable
from qwbatch.manifest.columns import COERCE, REQUIRED_COLUMNS, Bad
from qwbatch.manifest.reader import read_manifest
from qwbatch.manifest.rejects import Reject
from qwbatch.manifest.resolvers import InputResolver, LocalInputResolver
from qwbatch.manifest.schema import MANIFEST_SCHEMA


@dataclass(slots=True)
class SourceTable:
    """A source file as text cells, before validation.

    ``lines`` holds each table row's 1-based line in the file (where its record starts);
    ``rejects`` the records that could not even be parsed (a JSON line that is not an object),
    already numbered as source rows.
    """

    path: Path
    table: pa.Table
    source_rows: list[int]
    lines: list[int]
    rejects: list[Reject] = field(default_factory=list)


@dataclass(slots=True)
class Conversion:
    """What :func:`convert` did: rows written to ``out``, rejects with reasons, remarks."""

    out: Path
    written: int
    rejects: list[Reject]
    warnings: list[str]
    #: Source row number → 1-based line in the source file, for messages.
    line_of_row: dict[int, int]


# ----------------------------------------------------------------------------- reading


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            yield from enumerate(handle, start=1)
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path} is not UTF-8 text (save it as CSV UTF-8): {exc}") from exc
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror}") from exc


def read_csv(path: str | os.PathLike[str], *, delimiter: str = ",") -> SourceTable:
    """A CSV file (UTF-8, a header row naming the columns) as text cells."""
    path = Path(path)
    numbered = _text_lines(path)
    pending: list[tuple[int, str]] = []
    for number, text in numbered:  # notes and blank lines before the header
        if text.strip() and not text.lstrip().startswith("#"):
            pending.append((number, text))
            break
    if not pending:
        raise ManifestError(f"{path} has no header row (and no data)")
    line_numbers: list[int] = []

    def feed() -> Iterator[str]:
        for number, text in _chain(pending, numbered):
            line_numbers.append(number)
            yield text

    reader = csv.reader(feed(), delimiter=delimiter, strict=True)
    try:
        header = [name.strip() for name in next(reader)]
        names = _check_header(header, path)
        columns: list[list[str | None]] = [[] for _ in names]
        source_rows: list[int] = []
        lines: list[int] = []
        rejects: list[Reject] = []
        row_number = 0
        start = len(line_numbers) + 1
        for record in reader:
            first_line, start = start, len(line_numbers) + 1
            if not any(cell.strip() for cell in record):
                continue  # a blank line
            if len(record) > len(names):
                row_id = record[names.index("id")].strip() or None
                rejects.append(
                    Reject(
                        row_number,
                        row_id,
                        "(row)",
                        f"line {_first_line(line_numbers, first_line)} has {len(record)} cells but "
                        f"the header names {len(names)} columns",
                    )
                )
            else:
                for i, column in enumerate(columns):
                    cell = record[i] if i < len(record) else ""
                    column.append(cell if cell.strip() else None)
                source_rows.append(row_number)
                lines.append(_first_line(line_numbers, first_line))
            row_number += 1
    except csv.Error as exc:
        where = line_numbers[-1] if line_numbers else 1
        raise ManifestError(f"{path} is not valid CSV near line {where}: {exc}") from exc
    table = pa.table(
        {name: pa.array(col, pa.string()) for name, col in zip(names, columns, strict=True)}
    )
    return SourceTable(path, table, source_rows, lines, rejects)


def _chain(
    first: list[tuple[int, str]], rest: Iterable[tuple[int, str]]
) -> Iterator[tuple[int, str]]:
    yield from first
    yield from rest


def _first_line(line_numbers: list[int], position: int) -> int:
    """The file line of the ``position``-th line the CSV reader consumed (1-based)."""
    return line_numbers[position - 1] if 0 < position <= len(line_numbers) else position


def _check_header(header: list[str], path: Path) -> list[str]:
    if any(not name for name in header):
        raise ManifestError(f"{path}: the header has an empty column name: {header}")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ManifestError(f"{path}: column(s) {', '.join(repeated)} appear more than once")
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise ManifestError(
            f"{path} has no {' or '.join(map(repr, missing))} column; "
            f"its header: {', '.join(header)}"
        )
    return header


def read_jsonl(path: str | os.PathLike[str]) -> SourceTable:
    """A JSON Lines file (one JSON object a line, keys naming the columns) as text cells."""
    path = Path(path)
    records: list[dict[str, Any]] = []
    source_rows: list[int] = []
    lines: list[int] = []
    rejects: list[Reject] = []
    names: dict[str, None] = {}
    row_number = 0
    for number, text in _text_lines(path):
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError as exc:
            rejects.append(Reject(row_number, None, "(line)", f"line {number} is not JSON: {exc}"))
            row_number += 1
            continue
        if not isinstance(value, dict):
            kind = type(value).__name__
            rejects.append(
                Reject(row_number, None, "(line)", f"line {number} is a JSON {kind}, not an object")
            )
            row_number += 1
            continue
        for key in value:
            names.setdefault(str(key).strip(), None)
        records.append({str(k).strip(): v for k, v in value.items()})
        source_rows.append(row_number)
        lines.append(number)
        row_number += 1
    if not records and not rejects:
        raise ManifestError(f"{path} holds no JSON objects")
    header = _check_header(list(names), path) if records else list(REQUIRED_COLUMNS)
    table = pa.table(
        {name: pa.array([_cell_text(r.get(name)) for r in records], pa.string()) for name in header}
    )
    return SourceTable(path, table, source_rows, lines, rejects)


def _cell_text(value: Any) -> str | None:
    """A JSON value as the text a manifest cell accepts (lists and objects as JSON)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


# ----------------------------------------------------------------------------- converting


def convert(
    source: SourceTable,
    out: str | os.PathLike[str],
    *,
    table: ModelTable,
    default_model: str,
    strict: bool = False,
    resolve_input: InputResolver | None = None,
) -> Conversion:
    """Validate ``source`` as a run would and write its good rows to ``out`` (Parquet).

    Input image paths resolve against ``out``'s folder (where a run will look). With
    ``strict``, any reject raises ManifestError and nothing is written.
    """
    out = Path(out)
    resolver = resolve_input or LocalInputResolver(out.resolve().parent)
    accepted, rejects, warnings = _validate(source, table, default_model, resolver)
    rejects = sorted(source.rejects + rejects, key=lambda r: r.row_number)
    if strict and rejects:
        shown = "; ".join(map(str, rejects[:5]))
        raise ManifestError(f"{source.path} refused (strict): {len(rejects)} bad row(s): {shown}")
    typed = _typed(source.table.take(pa.array(accepted, pa.int64())))
    _write_atomically(typed, out)
    line_of_row = dict(zip(source.source_rows, source.lines, strict=True))
    return Conversion(out, typed.num_rows, rejects, warnings, line_of_row)


def _validate(
    source: SourceTable, table: ModelTable, default_model: str, resolver: InputResolver
) -> tuple[list[int], list[Reject], list[str]]:
    """Table rows the manifest reader accepts, its rejects (as source rows), its warnings."""
    with tempfile.TemporaryDirectory(prefix="qwbatch-convert-") as folder:
        scratch = Path(folder) / "manifest.parquet"
        pq.write_table(source.table, scratch)
        accepted: list[int] = []
        rejects: list[Reject] = []
        try:
            reader = read_manifest(
                scratch, table=table, default_model=default_model, resolve_input=resolver
            )
            for batch in reader:
                accepted.extend(request.row_number for request in batch.requests)
                rejects.extend(
                    Reject(source.source_rows[r.row_number], r.row_id, r.column, r.reason)
                    for r in batch.rejects
                )
        except ManifestError as exc:
            raise ManifestError(str(exc).replace(str(scratch), str(source.path))) from exc
        return accepted, rejects, reader.warnings


def _typed(table: pa.Table) -> pa.Table:
    """Known columns in their manifest types (values checked already); others as text."""
    arrays: list[pa.Array] = []
    fields: list[pa.Field] = []
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if name in COERCE:
            target = MANIFEST_SCHEMA.field(name)
            cells = [_plain(cell) for cell in COERCE[name](column)]
            arrays.append(pa.array(cells, target.type))
            fields.append(pa.field(name, target.type, nullable=target.nullable))
        else:
            arrays.append(column)
            fields.append(pa.field(name, column.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _plain(cell: Any) -> Any:
    if isinstance(cell, Bad):  # the reader accepted the row, so this cannot happen
        raise ManifestError(f"internal: an accepted row holds a bad cell ({cell.reason})")
    if isinstance(cell, tuple):
        return list(cell)
    if isinstance(cell, dict):  # params: kept as the JSON object text the reader takes
        return json.dumps(cell, ensure_ascii=False)
    return cell


def _write_atomically(table: pa.Table, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=".qwtmp-", suffix=".parquet", dir=out.parent)
    os.close(handle)
    try:
        pq.write_table(table, temp, compression="zstd")
        # mkstemp makes the file 0600; the manifest gets the mode any new file would (umask).
        os.chmod(temp, 0o666 & ~_umask())
        os.replace(temp, out)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask (read by setting it, then put back: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
