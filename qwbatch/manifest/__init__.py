"""Manifests: the Parquet files of render requests a run reads, checked row by row.

``read_manifest`` streams a manifest (a local or S3 Parquet file, or a folder of part files)
in record batches and validates every row against the model table: good rows become
``RenderRequest`` values, bad rows a ``Reject`` with a reason, and the good rows go on.

- ``schema``: the columns a manifest may hold (``MANIFEST_SCHEMA``) and the file checks;
- ``reader``: ``ManifestReader`` and its batches; ``row_checker``: one row's checks;
- ``duplicates``: repeated ids; ``rejects``: ``Reject`` and the rejects file;
- ``resolvers``: edit inputs' URIs to sha256 (``LocalInputResolver``);
- ``columns`` and ``vector``: Arrow columns to cells, and the column-wise checks;
- ``files``: local and S3 manifest files; ``converters``: CSV/JSONL to Parquet;
  ``template``: the starter manifest.
"""

from qwbatch.manifest.duplicates import DuplicateIds
from qwbatch.manifest.reader import (
    CheckedBlock,
    ManifestBatch,
    ManifestReader,
    ManifestSummary,
    batch_starts,
    gc_paused,
    read_manifest,
)
from qwbatch.manifest.rejects import REJECTS_SCHEMA, Reject, rejects_table
from qwbatch.manifest.resolvers import (
    UNSUPPORTED_INPUT,
    InputDigest,
    InputResolver,
    LocalInputResolver,
    PrefetchingResolver,
)
from qwbatch.manifest.row_checker import MAX_ID_CHARS, MAX_INPUT_IMAGES
from qwbatch.manifest.schema import MANIFEST_SCHEMA, manifest_rows

__all__ = [
    "MANIFEST_SCHEMA",
    "MAX_ID_CHARS",
    "MAX_INPUT_IMAGES",
    "REJECTS_SCHEMA",
    "UNSUPPORTED_INPUT",
    "CheckedBlock",
    "DuplicateIds",
    "InputDigest",
    "InputResolver",
    "LocalInputResolver",
    "ManifestBatch",
    "ManifestReader",
    "ManifestSummary",
    "PrefetchingResolver",
    "Reject",
    "batch_starts",
    "gc_paused",
    "manifest_rows",
    "read_manifest",
    "rejects_table",
]
