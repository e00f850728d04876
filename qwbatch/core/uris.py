"""How URIs are kept where others read them: catalog rows, object metadata, messages.

A URL's query and user info may be credentials (a presigned URL's ``X-Amz-Signature`` or
``OSSAccessKeyId``, ``user:password@``): they are dropped, and ``?…`` says a query was there.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from qwbatch.core.errors import ConfigError


def url_without_secrets(url: str) -> str:
    """``url`` without its user info and with ``?…`` for its query."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}" + ("?…" if parts.query else "")


def recorded_uri(uri: str) -> str:
    """``uri`` as the catalog and object metadata keep it: a URL without its query and user
    info, any other URI as given. The input's sha256, recorded beside it, is what identifies
    the bytes."""
    if uri[:8].lower().startswith(("https://", "http://")):
        return url_without_secrets(uri)
    return uri


def require_absolute(value: str, *, what: str, cwd: str) -> str:
    """``value`` if it is a URI (``s3://…``) or an absolute local path; ConfigError otherwise.

    Deployment runs start in a temporary working folder (``cwd``), where a relative path
    means nothing the user meant: the message names the folder and what to give instead.
    """
    if "://" in value or Path(value).expanduser().is_absolute():
        return value
    raise ConfigError(
        f"{what} {value!r} is a relative path, but this run's working folder is {cwd} (a "
        "deployment run starts in a temporary folder): give an absolute path or an s3:// URI"
    )
