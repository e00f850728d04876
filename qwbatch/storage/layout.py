"""Every key layout under DEST: where each kind of object lives in the store."""

from __future__ import annotations


def output_key(request_key: str, index: int) -> str:
    """Content-addressed key of a request's ``index``-th output image."""
    return f"images/{request_key[:2]}/{request_key}/{index}.png"


def learned_limit_key(scope: str, model: str) -> str:
    """Where the request limit learned for ``model`` on account ``scope`` is kept for the
    next run (JSON; see ``qwbatch.limits.learning.Learned``). Both names are quoted whole."""
    from urllib.parse import quote

    return f"limits/learned/{quote(model, safe='')}@{quote(scope, safe='')}.json"
