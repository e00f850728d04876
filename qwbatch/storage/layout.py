"""Every key layout under DEST: where each kind of object lives in the store."""

from __future__ import annotations

#: Manifests given to the Python API as tables, saved so that a rerun finds the same file.
TABLE_MANIFEST_PREFIX = "manifests/"


def output_key(request_key: str, index: int) -> str:
    """Content-addressed key of a request's ``index``-th output image."""
    return f"images/{request_key[:2]}/{request_key}/{index}.png"


def table_manifest_key(sha256_hex: str) -> str:
    """Key of a table manifest whose Parquet bytes hash to ``sha256_hex`` (first 24 digits)."""
    return f"{TABLE_MANIFEST_PREFIX}table-{sha256_hex[:24]}.parquet"
