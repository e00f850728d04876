"""Every key layout under DEST: where each kind of object lives in the store."""

from __future__ import annotations


def output_key(request_key: str, index: int) -> str:
    """Content-addressed key of a request's ``index``-th output image."""
    return f"images/{request_key[:2]}/{request_key}/{index}.png"


def lease_key() -> str:
    """The lease a run holds on DEST while it plans and renders (``storage.lease``)."""
    return "lease/run.json"
