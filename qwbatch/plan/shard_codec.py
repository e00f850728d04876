"""Shard file bytes: JSON lines compressed with zstd (level 1), read back whatever wrote them.

Shard files were gzip'd (``shard-NNNNN.jsonl.gz``) before zstd: a run planned then can still
be resumed, as :func:`decompress` tells the two apart by their magic bytes, not their name.
zstd at level 1 through pyarrow's own codec (no new dependency) compresses a plan's shards
about four times faster than gzip at level 1 into files about a quarter smaller, and reads
them back about twice as fast (``bench/bench_plan.py``, measured on the bench's shards).
"""

from __future__ import annotations

import gzip
from typing import Final

import pyarrow as pa

#: Content type of the shard files written now (their names: ``qwbatch.storage.layout``).
CONTENT_TYPE: Final = "application/zstd"
#: zstd level: 1 is the fastest of the usual levels, and already smaller than gzip's 1.
ZSTD_LEVEL: Final = 1

_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC: Final = b"\x1f\x8b"
_CODEC: Final = pa.Codec("zstd", ZSTD_LEVEL)


def compress(text: bytes | pa.Buffer) -> bytes:
    """A shard file's bytes from its UTF-8 JSON lines (each ending with a newline)."""
    return bytes(_CODEC.compress(text, asbytes=True))


def decompress(data: bytes) -> bytes:
    """The JSON lines of a shard file's bytes, zstd (now) or gzip (before)."""
    if data[:4] == _ZSTD_MAGIC:
        return bytes(pa.input_stream(pa.py_buffer(data), compression="zstd").read())
    if data[:2] == _GZIP_MAGIC:
        return gzip.decompress(data)
    raise ValueError("not a shard file: neither zstd nor gzip data")
