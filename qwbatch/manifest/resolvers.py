"""Edit inputs of a manifest: an input image's URI resolved to the sha256 of its bytes.

Edit inputs are resolved to the sha256 of their bytes (``resolve_input(uri)`` returns the
hex digest, or an ``InputDigest`` that adds a note for the catalog), once per distinct URI
within a read. A resolver with a ``prefetch(uris)`` method is handed each batch's URIs
first, so it can fetch them concurrently. The default resolver hashes local files under the
manifest's folder (``LocalInputResolver``); a run plans with ``qwbatch.inputs.staging.InputStage``,
which also reads S3, https and earlier outputs and checks and normalises every image.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from qwbatch.core.errors import ManifestError, StorageError

#: Message for input URIs whose scheme the default resolver does not read.
UNSUPPORTED_INPUT: Final = (
    "LocalInputResolver reads local files only (qwbatch.inputs.staging.InputStage reads s3://, "
    "https:// and catalog: inputs too)"
)

_SCHEME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://|^data:")


@dataclass(frozen=True, slots=True)
class InputDigest:
    """What a resolver knows of one input: the sha256 (hex) of its original bytes, and a
    note for the catalog (where it came from, what was changed to send it; "" if nothing)."""

    sha256: str
    note: str = ""


#: ``uri -> sha256 hex`` (or an InputDigest) of the input image's bytes. Raise a
#: PermanentError (any subclass) to reject the row with its message; any other exception
#: ends the read.
InputResolver = Callable[[str], "str | InputDigest"]


@runtime_checkable
class PrefetchingResolver(Protocol):
    """A resolver that can fetch many inputs at once, ahead of the calls for each."""

    def __call__(self, uri: str) -> str | InputDigest: ...

    def prefetch(self, uris: Iterable[str]) -> None: ...


class LocalInputResolver:
    """Hash input images that are local files inside the manifest's folder.

    A relative path is taken from ``base_dir``; an absolute path (or ``file://`` URI) must lie
    inside it. Paths are compared after lexical normalisation, so ``..`` cannot climb out;
    symlinks inside the folder are followed (whoever owns the folder placed them). Other
    schemes (``s3://``, ``https://``, ``data:``) are refused for now.
    """

    def __init__(self, base_dir: str | os.PathLike[str]) -> None:
        self.base_dir = Path(os.path.abspath(base_dir))
        self._real_base = Path(os.path.realpath(base_dir))

    def __call__(self, uri: str) -> str:
        """The sha256 hex of the file's bytes; ManifestError or StorageError when refused."""
        path_text = uri
        if _SCHEME.match(uri):
            parts = urlsplit(uri)
            if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost"):
                raise ManifestError(f"{UNSUPPORTED_INPUT} (got {uri!r})")
            path_text = unquote(parts.path)
        raw = Path(path_text)
        path = Path(os.path.normpath(raw if raw.is_absolute() else self.base_dir / raw))
        if not (path.is_relative_to(self.base_dir) or path.is_relative_to(self._real_base)):
            where = "is outside" if raw.is_absolute() else "escapes"
            raise ManifestError(f"input path {uri!r} {where} the manifest's folder {self.base_dir}")
        try:
            with path.open("rb") as handle:
                return hashlib.file_digest(handle, "sha256").hexdigest()
        except FileNotFoundError:
            raise StorageError(f"input image not found: {uri!r} (looked for {path})") from None
        except OSError as exc:
            raise StorageError(f"cannot read input image {uri!r}: {exc.strerror}") from exc
