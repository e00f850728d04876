"""Where a run's objects live: one store protocol, two stores, and the layout of keys under DEST.

- :mod:`~qwbatch.storage.base`: the :class:`ObjectStore` protocol and the key/metadata rules.
- :mod:`~qwbatch.storage.local`, :mod:`~qwbatch.storage.s3`: a local folder, an S3 bucket.
- :mod:`~qwbatch.storage.stores`: :func:`open_store` by URI, and :func:`make_durable`.
- :mod:`~qwbatch.storage.layout`: every key under DEST, drawn as a tree.
- :mod:`~qwbatch.storage.metadata`, :mod:`~qwbatch.storage.thumbs`: what an output carries
  in its object metadata, and its thumbnail.
"""

from qwbatch.storage import layout
from qwbatch.storage.base import ObjectInfo, ObjectStore, PutResult, sanitize_key_part
from qwbatch.storage.local import LocalStore
from qwbatch.storage.s3 import S3Store, make_s3_client
from qwbatch.storage.stores import make_durable, open_store

__all__ = [
    "LocalStore",
    "ObjectInfo",
    "ObjectStore",
    "PutResult",
    "S3Store",
    "layout",
    "make_durable",
    "make_s3_client",
    "open_store",
    "sanitize_key_part",
]
