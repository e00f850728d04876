"""HTTP plumbing the FLUX and GPT Image clients share: one send that translates httpx.

A failure before a byte of the request left is transient (retry it); once a billable
request may have left, a lost answer is ambiguous (it may have been billed). Messages name
the method and the URL's path, never its query (a signed result URL) nor any header.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from qwbatch.core.errors import ProviderAmbiguousError, ProviderError, ProviderTransientError
from qwbatch.core.version import __version__

#: Failures raised before a single byte of the request left: always safe to retry.
BEFORE_SEND: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
USER_AGENT: Final = f"qwbatch/{__version__}"


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    billable: bool,
    json: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None,
    timeout_s: float | None = None,
) -> httpx.Response:
    """Send one request with ``client``; httpx's exceptions leave as ours (see module doc)."""
    what = f"{method} {path_of(url)}"
    try:
        request = client.build_request(
            method,
            url,
            headers={"User-Agent": USER_AGENT, **headers},
            json=json,
            data=data,
            files=files,
            timeout=timeout_s if timeout_s is not None else httpx.USE_CLIENT_DEFAULT,
        )
    except httpx.InvalidURL as exc:
        raise ProviderError(f"{method}: not a valid URL", code="InvalidURL") from exc
    try:
        return await client.send(request)
    except BEFORE_SEND as exc:
        name = type(exc).__name__
        raise ProviderTransientError(
            f"{what}: {name} before the request was sent", code=name
        ) from exc
    except httpx.UnsupportedProtocol as exc:
        raise ProviderError(f"{what}: unsupported URL scheme", code="UnsupportedProtocol") from exc
    except httpx.HTTPError as exc:
        name = type(exc).__name__
        if billable:
            raise ProviderAmbiguousError(
                f"{what}: {name} after the request was sent; it may have been billed", code=name
            ) from exc
        raise ProviderTransientError(f"{what}: {name}", code=name) from exc


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The response's JSON object, or None when the body is not one."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def path_of(url: str) -> str:
    """The path of ``url`` for messages: never its query (a signature)."""
    try:
        return urlsplit(url).path
    except ValueError:
        return "(not a valid URL)"


def snippet(text: str, limit: int = 200) -> str:
    """A short one-line excerpt of a body that is not JSON."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def as_dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def as_number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
