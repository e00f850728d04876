"""Every key layout under DEST: where each kind of object lives in the store."""

from __future__ import annotations

import re


def output_key(request_key: str, index: int) -> str:
    """Content-addressed key of a request's ``index``-th output image."""
    return f"images/{request_key[:2]}/{request_key}/{index}.png"


_OUTPUT_KEY_RE = re.compile(r"images/[0-9a-f]{2}/([0-9a-f]{64})/(\d+)\.png$")


def output_of(output_uri: str | None, request_key: str, index: int) -> tuple[str, int]:
    """``(request key, index)`` of the output a catalog row points at.

    Usually the row's own; a row whose text was re-rolled keeps the image of a re-roll,
    which lives under that re-roll's request key (named by its ``output_uri``).
    """
    match = _OUTPUT_KEY_RE.search(output_uri or "")
    return (match[1], int(match[2])) if match else (request_key, index)
