"""HTTP plumbing the provider clients share: one send that translates httpx, and the HTTP
answers every provider gives alike mapped onto the error tree (:mod:`qwbatch.core.errors`).

A failure before a byte of the request left is transient (retry it); once a billable
request may have left, a lost answer is ambiguous (it may have been billed). An answer's
status decides the rest where the provider's own codes did not (:func:`status_error`):
429 slows down, 408 and 5xx are retried, anything else is refused for good. Messages name
the method and the URL's path, never its query (a signed result URL) nor any header.
"""

from __future__ import annotations

import email.utils
import math
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from qwbatch.core.errors import (
    ProviderAmbiguousError,
    ProviderError,
    ProviderTransientError,
    ResultExpiredError,
    ThrottledError,
)
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


def status_error(
    status: int,
    text: str,
    *,
    code: str,
    request_id: str | None = None,
    retry_after: float | None = None,
    throttled: bool = False,
) -> ProviderError | ProviderTransientError:
    """The error of an API answer that its status decides: 429 (or ``throttled``, a
    provider's own throttling code) is :class:`ThrottledError`, 408 and 5xx are
    :class:`ProviderTransientError`, anything else :class:`ProviderError` — marked
    ``account_wide`` for 401 and 403 (a wrong key, an account without access refuse every
    request alike: the rows are left unrendered and the run's breaker counts them).

    ``retry_after`` (seconds) rides on the two that are retried.
    """
    if throttled or status == 429:
        return ThrottledError(
            text, code=code, status_code=status, request_id=request_id, retry_after=retry_after
        )
    if status >= 500 or status == 408:
        return ProviderTransientError(
            text, code=code, status_code=status, request_id=request_id, retry_after=retry_after
        )
    error = ProviderError(text, code=code, status_code=status, request_id=request_id)
    error.account_wide = status in (401, 403)
    return error


def unreadable_answer(
    what: str, status: int, *, billable: bool
) -> ProviderAmbiguousError | ProviderTransientError:
    """The error of a success answer whose body is not the JSON object it should be: a billed
    call may have made images (ambiguous), a poll or a listing can be made again."""
    problem = f"{what}: HTTP {status} without a JSON object"
    if billable:
        return ProviderAmbiguousError(problem)
    return ProviderTransientError(problem, status_code=status)


def download_error(
    response: httpx.Response, url: str, *, expired: str | None = None
) -> ProviderError | ProviderTransientError:
    """The error of a failed result download (a result host, not the API: nothing throttles).

    ``expired`` says why, when the caller judged the result gone (:class:`ResultExpiredError`);
    otherwise 408, 429 and 5xx are :class:`ProviderTransientError` and anything else
    :class:`ProviderError`, code ``HTTP<status>``.
    """
    status = response.status_code
    head = f"GET {path_of(url)}: HTTP {status}"  # the query is a signature: keep it out
    if expired is not None:
        return ResultExpiredError(f"{head}: {expired}", code="ResultExpired", status_code=status)
    text = f"{head}: {snippet(response.text)}"
    if status in (408, 429) or status >= 500:
        return ProviderTransientError(
            text,
            code=f"HTTP{status}",
            status_code=status,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    return ProviderError(text, code=f"HTTP{status}", status_code=status)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """A ``Retry-After`` header (seconds, or an HTTP date) as seconds from now; None if unusable."""
    if not value or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The response's JSON object, or None when the body is not one."""
    try:
        body = response.json()
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both derive from it
        return None
    return body if isinstance(body, dict) else None


def path_of(url: str) -> str:
    """The path of ``url`` for messages: never its query (a signature)."""
    try:
        return urlsplit(url).path
    except ValueError:  # a malformed host; sending it fails with a message of its own
        return "(not a valid URL)"


def snippet(text: str, limit: int = 200) -> str:
    """A short one-line excerpt (at most ``limit`` characters) of a body that is not JSON: an
    HTML error page, an object store's XML error."""
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
