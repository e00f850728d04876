"""Thumbnails stored beside the outputs: ``thumbs/<2>/<request_key>/<index>.webp``.

The engine stores one when it stores an output, so contact sheets and HTML reports read a few
kilobytes per image instead of the full output. A thumbnail is a convenience, never a result:
when one cannot be made or stored the output still counts, a warning is logged, and readers
make the thumbnail from the output itself (see :mod:`qwbatch.catalog.view`).
"""

from __future__ import annotations

import logging

from qwbatch.core import images
from qwbatch.core.errors import QwBatchError
from qwbatch.storage.base import ObjectStore
from qwbatch.storage.layout import thumb_key

log = logging.getLogger(__name__)


def store_thumbnail(store: ObjectStore, request_key: str, index: int, data: bytes) -> str | None:
    """Make and store the thumbnail of output ``data``; its URI, or None when that failed.

    Content-addressed like the output: an existing thumbnail is left as it is.
    """
    try:
        small = images.thumbnail(data)
    except QwBatchError as exc:
        log.warning("no thumbnail for %s image %d: %s", request_key, index, exc.message)
        return None
    return put_thumbnail(store, request_key, index, small)


def put_thumbnail(store: ObjectStore, request_key: str, index: int, small: bytes) -> str | None:
    """Store a thumbnail already made (see :func:`qwbatch.core.images.check_output`); its URI, or
    None when the store refused it (logged: a thumbnail is never worth failing a row)."""
    key = thumb_key(request_key, index)
    try:
        put = store.put(
            key,
            small,
            content_type="image/webp",
            metadata={"request-key": request_key, "image-index": str(index)},
            if_none_match=True,
            durable=False,  # readers make a lost thumbnail again from the output
        )
    except QwBatchError as exc:
        log.warning("no thumbnail for %s image %d: %s", request_key, index, exc.message)
        return None
    return put.uri
