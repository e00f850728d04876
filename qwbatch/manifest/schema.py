"""The manifest's Parquet schema: the columns a manifest may hold, and the checks of a file.

A manifest is a Parquet file (or a folder of Parquet part files, as Spark and DuckDB write
them), local or on S3 (``qwbatch.manifest.files``), with one render request per row:

=================  ============================  =============================================
column             required / default            accepted Arrow types
=================  ============================  =============================================
``id``             required, unique              string-like [#s]_, or integer (→ decimal text)
``prompt``         required, non-empty           string-like
``mode``           ``generate``                  string-like: ``generate`` | ``edit``, any case
``model``          ``default_model``             string-like
``negative_prompt``  none                        string-like; empty → none
``size``           none (the model's default)    string-like ``W*H``; ``WxH``, ``W X H`` … too
``n``              1                             integer, whole float/decimal, integer text
``seed``           derived (see ``keys``)        same as ``n``; in [0, 2147483647]
``prompt_extend``  none (the provider's default) bool, 0/1, ``"true"``/``"false"``/``"1"``/``"0"``
``watermark``      false                         same as ``prompt_extend``
``input_images``   none                          list<string-like> (list, large_list, …), one
                                                 string (one image), or a JSON-array string
``tags``           none                          map, list<string>, struct, or a string
``priority``       none                          same as ``n``; higher renders first when a
                                                 budget trims the run (``qwbatch.budget.policy``)
``params``         none                          map<string, scalar>, struct, or a JSON-object
                                                 string: provider parameters (quality, …)
                                                 checked against the model's ``params``
``models``         none (``model``)              list<string>, or a comma-separated string: the
                                                 row renders once on each (id ``ID@MODEL``)
``expected_text``  none (text is not checked)    list<string-like>, a JSON-array string, or a
                                                 string; ``|`` separates several in a string
=================  ============================  =============================================

.. [#s] string-like: ``string``, ``large_string``, ``string_view``, UTF-8 ``binary`` and any
   ``dictionary<…>`` of those. Every optional column may be null anywhere, or absent, or of
   Arrow type ``null`` (pandas writes all-None columns so).

Rows are numbered from **0**, in file order (like Arrow, polars and DuckDB's
``file_row_number``); a folder's part files are read in name order and numbered on.

**Tags.** Whatever the form, tags become a sorted tuple of ``(key, value)`` string pairs:
a map or struct gives its entries (null values are dropped; numbers and booleans become
text); a list gives one tag per item, ``"k=v"`` → ``("k", "v")`` and a plain label ``"x"`` →
``("x", "")``; a string holding a JSON object or array is read as that map or list, any other
string is a comma-separated list of items. Keys and values are stripped; a repeated key keeps
its last value; an empty key rejects the row. Tags are not part of the request key.

This module opens a manifest's files, checks their schema (``check_schema``: required
columns, accepted types, unknown columns ignored with a warning) and reads their footers
(``manifest_rows``); ``qwbatch.manifest.reader`` reads the rows.
"""

from __future__ import annotations

import os
import re
from typing import Final

import pyarrow as pa
import pyarrow.parquet as pq

from qwbatch.core.errors import ManifestError
from qwbatch.core.settings import Settings
from qwbatch.manifest.columns import COLUMN_TYPES, REQUIRED_COLUMNS, value_type
from qwbatch.manifest.files import ManifestFile, manifest_files

#: The schema a manifest writer should use; the reader also accepts the variants above.
MANIFEST_SCHEMA: Final = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("mode", pa.string()),
        pa.field("model", pa.string()),
        pa.field("negative_prompt", pa.string()),
        pa.field("size", pa.string()),
        pa.field("n", pa.int32()),
        pa.field("seed", pa.int64()),
        pa.field("prompt_extend", pa.bool_()),
        pa.field("watermark", pa.bool_()),
        pa.field("input_images", pa.list_(pa.string())),
        pa.field("tags", pa.map_(pa.string(), pa.string())),
        pa.field("priority", pa.int32()),
        pa.field("params", pa.string()),  # a JSON object; map and struct columns are read too
        pa.field("models", pa.list_(pa.string())),
        pa.field("expected_text", pa.list_(pa.string())),
    ]
)

_PANDAS_INDEX: Final = re.compile(r"__index_level_\d+__")
_RESERVED: Final = frozenset[str]()  # known columns that are not read yet


def open_parquet(path: ManifestFile) -> pq.ParquetFile:
    try:
        return path.open()
    except (OSError, pa.ArrowException) as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from exc


def check_schema(schema: pa.Schema, path: ManifestFile) -> tuple[list[str], list[str]]:
    """The known columns present in ``schema`` and warnings for the ignored ones."""
    names: list[str] = list(schema.names)
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        raise ManifestError(
            f"manifest {path} has no {' or '.join(map(repr, missing))} column; "
            f"its columns: {', '.join(names) or '(none)'}"
        )
    problems: list[str] = []
    present: list[str] = []
    warnings: list[str] = []
    for name in dict.fromkeys(names):
        if names.count(name) > 1:
            problems.append(f"column {name!r} appears {names.count(name)} times")
        elif name in COLUMN_TYPES:
            expected, accepts = COLUMN_TYPES[name]
            arrow_type = schema.field(name).type
            if not (pa.types.is_null(arrow_type) or accepts(value_type(arrow_type))):
                problems.append(f"column {name!r} has type {arrow_type}; expected {expected}")
            present.append(name)
        elif name not in _RESERVED and not _PANDAS_INDEX.fullmatch(name):
            warnings.append(f"ignored unknown column {name!r}")
    if problems:
        raise ManifestError(f"manifest {path} cannot be used: {'; '.join(problems)}")
    return present, warnings


def manifest_rows(path: str | os.PathLike[str], *, settings: Settings | None = None) -> list[int]:
    """The rows of each of the manifest's files, from their footers alone (ManifestError
    when a file cannot be opened)."""
    rows: list[int] = []
    for file in manifest_files(path, settings=settings):
        parquet = open_parquet(file)
        try:
            rows.append(parquet.metadata.num_rows)
        finally:
            parquet.close()
    return rows
