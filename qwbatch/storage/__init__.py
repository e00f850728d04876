"""Where a run's objects live: one store protocol, two stores, and the layout of keys under DEST.

::

    base.py      the ObjectStore protocol, and the rules on keys and metadata every store keeps
    local.py     LocalStore: a local folder, atomic writes, metadata in hidden sidecars
    s3.py        S3Store: an S3-compatible bucket, and the boto3 client for it
    stores.py    open_store (a store by URI) and make_durable
    layout.py    every key under DEST, drawn as a tree: outputs, catalog, runs, journals…
    metadata.py  what an output image's object metadata says, so the catalog can be rebuilt
    thumbs.py    the thumbnail stored beside each output

Names are imported from their module on first use, so importing one module stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qwbatch.storage.base import ObjectInfo as ObjectInfo
    from qwbatch.storage.base import ObjectStore as ObjectStore
    from qwbatch.storage.base import PutResult as PutResult
    from qwbatch.storage.base import sanitize_key_part as sanitize_key_part
    from qwbatch.storage.base import validate_key as validate_key
    from qwbatch.storage.local import LocalStore as LocalStore
    from qwbatch.storage.s3 import S3Store as S3Store
    from qwbatch.storage.s3 import make_s3_client as make_s3_client
    from qwbatch.storage.stores import make_durable as make_durable
    from qwbatch.storage.stores import open_store as open_store

#: Each re-exported name → the module that defines it.
_HOME: dict[str, str] = {
    "ObjectInfo": "base",
    "ObjectStore": "base",
    "PutResult": "base",
    "sanitize_key_part": "base",
    "validate_key": "base",
    "LocalStore": "local",
    "S3Store": "s3",
    "make_s3_client": "s3",
    "make_durable": "stores",
    "open_store": "stores",
}

__all__ = [
    "LocalStore",
    "ObjectInfo",
    "ObjectStore",
    "PutResult",
    "S3Store",
    "make_durable",
    "make_s3_client",
    "open_store",
    "sanitize_key_part",
    "validate_key",
]


def __getattr__(name: str) -> object:
    """A re-exported name, its module imported on first use (PEP 562)."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
