"""The text of Arrow string arrays as bytes, without a Python string per value."""

from __future__ import annotations

import pyarrow as pa


def text_of(values: pa.Array) -> pa.Buffer:
    """The UTF-8 bytes of the consecutive values of a string array (nulls add nothing),
    without a copy: a slice of its data buffer."""
    if len(values) == 0:
        return pa.py_buffer(b"")
    _, offsets, data = values.buffers()
    bounds = pa.Array.from_buffers(
        pa.int32(), len(values) + 1, [None, offsets], offset=values.offset
    )
    first, last = bounds[0].as_py(), bounds[len(values)].as_py()
    if data is None:  # every value empty
        return pa.py_buffer(b"")
    return data.slice(first, last - first)
