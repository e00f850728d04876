"""Where a report's image card links: the full-size output, so a person can read its text.

A link maker maps a store key (``outputs/…``) to an ``href``:

- ``relative``: for a local DEST, the path from the page's folder to the file, so the page
  and DEST can move together (and the link opens from disk);
- ``presigned``: for S3, a presigned GET URL valid for ``expires_s`` seconds (the page then
  holds time-limited credentials in its links: share it as you would the bucket);
- ``public``: ``base_url`` + key, for a bucket (or a CDN in front of it) that serves DEST
  publicly;
- ``none``: no links.

::

    link = link_maker(store, mode="relative", page_dir=Path("out"))
    link("outputs/ab/abcd…-0.png")  # 'outputs/ab/abcd…-0.png'
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal, get_args
from urllib.parse import quote

from qwbatch.core.errors import ConfigError
from qwbatch.storage.stores import LocalStore, ObjectStore, S3Store

LinkMode = Literal["auto", "relative", "presigned", "public", "none"]
#: A store key → the ``href`` of its full-size image (None: no link).
ImageLink = Callable[[str], str | None]
#: How long a presigned link works by default, in seconds (7 days, S3's longest).
DEFAULT_PRESIGN_S = 7 * 24 * 3600


def link_maker(
    store: ObjectStore,
    *,
    mode: LinkMode = "auto",
    page_dir: Path | None = None,
    base_url: str | None = None,
    expires_s: int = DEFAULT_PRESIGN_S,
) -> ImageLink | None:
    """The link maker for ``store`` (``auto``: relative for a local DEST when ``page_dir`` is
    known, public when ``base_url`` is given, else none). ConfigError for a mode the store
    cannot serve, or one that does not exist."""
    if mode not in get_args(LinkMode):
        known = ", ".join(get_args(LinkMode))
        raise ConfigError(f"unknown image link mode {mode!r} (known: {known})")
    if mode == "auto":
        if base_url:
            mode = "public"
        elif isinstance(store, LocalStore) and page_dir is not None:
            mode = "relative"
        else:
            mode = "none"
    if mode == "none":
        return None
    if mode == "public":
        if not base_url:
            raise ConfigError("public image links need a base URL (--link-base-url)")
        return _public(base_url)
    if mode == "relative":
        if not isinstance(store, LocalStore) or page_dir is None:
            raise ConfigError("relative image links need a local DEST and a page written to disk")
        return _relative(store.root, page_dir)
    if not isinstance(store, S3Store):
        raise ConfigError("presigned image links need an s3:// DEST")
    return _presigned(store, expires_s)


def _relative(root: Path, page_dir: Path) -> ImageLink:
    start = page_dir.expanduser().resolve()

    def link(key: str) -> str:
        return quote(Path(os.path.relpath(root / key, start)).as_posix())

    return link


def _public(base_url: str) -> ImageLink:
    base = base_url.rstrip("/")
    return lambda key: f"{base}/{quote(key)}"


def _presigned(store: S3Store, expires_s: int) -> ImageLink:
    def link(key: str) -> str:
        full = f"{store.prefix}/{key}" if store.prefix else key
        url: str = store.client.generate_presigned_url(
            "get_object", Params={"Bucket": store.bucket, "Key": full}, ExpiresIn=expires_s
        )
        return url

    return link
