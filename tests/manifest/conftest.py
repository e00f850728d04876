"""Fixtures the manifest reader's test modules share (helpers: ``manifest_helpers``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest


@pytest.fixture
def images(tmp_path: Path) -> dict[str, str]:
    """Four input images next to the manifest: relative path -> sha256 of the bytes."""
    (tmp_path / "inputs").mkdir()
    digests = {}
    for name in ("a.png", "b.png", "c.png", "d.png"):
        data = f"not really a png: {name}".encode()
        (tmp_path / "inputs" / name).write_bytes(data)
        digests[f"inputs/{name}"] = hashlib.sha256(data).hexdigest()
    return digests
