"""The Python API: what ``import qwbatch`` offers, and what the CLI's commands call.

- :func:`run`, :func:`estimate`, :func:`validate` (:mod:`qwbatch.api.running`): manifests
  as paths, URIs or tables (:mod:`qwbatch.api.manifests`), options as the CLI's;
- :func:`read_catalog` (:mod:`qwbatch.api.catalog`): a DEST's catalog as a pyarrow Table.

Each works from inside a running event loop (:mod:`qwbatch.api.threads`). Exports to
datasets are :func:`qwbatch.export.export`.
"""

from qwbatch.api.catalog import read_catalog
from qwbatch.api.manifests import ManifestLike
from qwbatch.api.running import Validation, estimate, run, validate

__all__ = ["ManifestLike", "Validation", "estimate", "read_catalog", "run", "validate"]
