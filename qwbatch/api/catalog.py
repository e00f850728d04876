"""``read_catalog``: a DEST's catalog as one pyarrow Table, for polars, DuckDB or pandas."""

from __future__ import annotations

import os

import pyarrow as pa

from qwbatch.api.threads import off_the_loop
from qwbatch.catalog.view import catalog_records
from qwbatch.core.settings import Settings
from qwbatch.storage.stores import open_store


def read_catalog(
    out: str | os.PathLike[str], run: str | None = None, latest: bool = True
) -> pa.Table:
    """The catalog of ``out`` (a folder or ``s3://bucket/prefix``) as a pyarrow Table.

    One row per output image, and one per request that ended without one, with every
    catalog column (``row_id``, ``status``, ``prompt``, ``output_uri``, ``cost``, ``tags``
    as a map, …); parts written before a column existed read as nulls there.

    ``latest`` (the default) keeps, for each manifest row id, the records of the newest run
    that recorded it: rendered last week and deduplicated today, a row shows today's
    records. ``latest=False`` keeps every record of every run. ``run`` keeps one run's
    records only (``"latest"``: the newest run). Rows are sorted by row id, image index,
    then run id.

    Example::

        import polars as pl
        df = pl.from_arrow(qwbatch.read_catalog("out"))
        df.filter(pl.col("status") == "failed")
    """
    return off_the_loop(
        lambda: catalog_records(open_store(os.fspath(out), Settings()), run=run, latest=latest)
    )
