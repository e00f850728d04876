"""Edit inputs: turn a manifest's input image reference into what the provider is sent.

This first version reads files under the manifest's folder and sends them as base64 data
URIs; ``https://`` inputs are passed through as URLs. (``s3://`` sources, Pillow checks and
normalisation come with the edit-inputs feature.)
"""

from __future__ import annotations

import asyncio
import base64
import mimetypes
from pathlib import Path

from qwbatch.errors import PermanentError


class LocalInputs:
    """Loads input images relative to ``base_dir``; refuses paths that leave it."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir.resolve()
        self._cache: dict[str, str] = {}

    def path(self, uri: str) -> Path:
        raw = uri.removeprefix("file://")
        candidate = (self.base_dir / raw).resolve()
        if not candidate.is_relative_to(self.base_dir):
            raise PermanentError(f"input {uri!r} is outside the manifest's folder")
        return candidate

    async def __call__(self, uri: str) -> str:
        if uri.startswith("https://"):
            return uri
        if uri not in self._cache:
            path = self.path(uri)
            try:
                data = await asyncio.to_thread(path.read_bytes)
            except OSError as exc:
                raise PermanentError(f"cannot read input {uri!r}: {exc.strerror}") from exc
            mime = mimetypes.guess_type(path.name)[0] or "image/png"
            self._cache[uri] = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        return self._cache[uri]
