"""How URIs are kept where others read them: catalog rows, object metadata, messages.

A URL's query and user info may be credentials (a presigned URL's ``X-Amz-Signature`` or
``OSSAccessKeyId``, ``user:password@``): they are dropped, and ``?…`` says a query was there.
"""

from __future__ import annotations

from urllib.parse import urlsplit


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
