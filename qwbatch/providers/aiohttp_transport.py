"""An httpx transport that sends through aiohttp: the provider's HTTP at half the CPU.

The provider speaks httpx (requests, responses, exceptions, ``MockTransport`` in tests);
this transport only replaces what is under it. httpcore's connection pool scans every pooled
connection on every request and every response close (an ``anyio`` lookup and a
``getpeername`` each), and its HTTP/1.1 parser is pure Python; aiohttp's pool and C parser
do the same work for much less. Measured against the simulator (1,500 images, 32 in
flight, engine alone): the event loop's thread spent 5.7 ms of CPU per image instead of
14.0, and the engine went from 45 to 90 images per second.

What must not change is which failures count as *before send*. The provider retries a
``ConnectError`` / ``ConnectTimeout`` / ``PoolTimeout`` freely (the request never left), and
treats anything else after a billable POST as possibly billed. So aiohttp's errors are
mapped by what they mean, not by name:

============================================  =================================
aiohttp                                        httpx
============================================  =================================
``ConnectionTimeoutError`` (pool wait, connect) ``ConnectTimeout``  (before send)
``ClientConnectorError`` (refused, DNS, TLS)  ``ConnectError``    (before send)
``SocketTimeoutError``, ``ServerTimeoutError``  ``ReadTimeout``
``ServerDisconnectedError``                   ``RemoteProtocolError``
``ClientResponseError`` (a malformed answer)  ``RemoteProtocolError``
``InvalidURL``, ``NonHttpUrlClientError``     ``UnsupportedProtocol``
any other ``ClientError`` (``ClientOSError``, ``ClientPayloadError``…)  ``ReadError``
============================================  =================================

(``httpx_aiohttp`` on PyPI maps every ``ClientConnectionError``, a server's disconnect
included, to ``ConnectTimeout``: for us that would resend a POST that may have been billed.)

One difference remains: httpcore polls a pooled connection's socket before reusing it, so a
connection the server closed a moment ago is seldom picked; aiohttp knows of the close only
once its event loop has seen it. A POST sent on such a connection fails as a disconnect,
which counts as possibly billed. Idle connections are dropped here after httpx's
``keepalive_expiry`` (5 s), well before servers close idle connections, and a server that
closes after an answer says so in it (``Connection: close``), so the window is small.

Messages carry aiohttp's text only for errors whose text holds no URL (a result URL's
query is its signature); the others get their class name, and no chained cause. Cookies
stay httpx's business (the session's jar is a dummy), redirects too (never followed here),
and so do proxies (httpx routes proxied URLs through its own transports).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import aiohttp
import httpx
from multidict import CIMultiDict

#: (aiohttp error, httpx error) in the order they are tried: subclasses first.
_ERRORS: tuple[tuple[type[BaseException], type[httpx.HTTPError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.NonHttpUrlClientError, httpx.UnsupportedProtocol),
    (aiohttp.ClientError, httpx.ReadError),
)

#: Errors whose text names no URL, so it (and the chain) can be kept. Most others put the
#: URL in their text: "Can not write request body for http://…", "Connection timeout to
#: host http://…".
_SAFE_TEXT: tuple[type[BaseException], ...] = (
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientPayloadError,
)


def translate(exc: aiohttp.ClientError) -> httpx.HTTPError:
    """The httpx error that means what ``exc`` means (see the module's table)."""
    target = next((to for source, to in _ERRORS if isinstance(exc, source)), httpx.ReadError)
    name = type(exc).__name__
    text = f"{name}: {exc}" if isinstance(exc, _SAFE_TEXT) and str(exc) else name
    return target(text)


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except aiohttp.ClientError as exc:
        if isinstance(exc, _SAFE_TEXT):
            raise translate(exc) from exc
        raise translate(exc) from None  # its text (and so its chain) may hold a signed URL


def _client_timeout(timeout: httpx.Timeout) -> aiohttp.ClientTimeout:
    """aiohttp's timeouts for httpx's (seconds; None: no limit)."""
    return _timeouts(timeout.connect, timeout.read, timeout.pool)


@lru_cache(maxsize=16)
def _timeouts(
    connect: float | None, read: float | None, pool: float | None
) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=None,
        # aiohttp's "connect" is the wait for a pooled connection plus making one.
        connect=None if pool is None or connect is None else pool + connect,
        sock_connect=connect,
        sock_read=read,
    )


class _Body(httpx.AsyncByteStream):
    """A response body read from aiohttp as it arrives; closing it frees the connection."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _translated():
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Send httpx requests through one aiohttp session, made on first use in the running loop.

    ``limits`` are httpx's: ``max_connections`` bounds the pool, ``keepalive_expiry`` is how
    long an idle connection is kept (seconds). ``ssl_context`` defaults to httpx's own
    (certifi, ``SSL_CERT_FILE``), so both transports trust the same certificates.
    """

    def __init__(
        self,
        *,
        limits: httpx.Limits | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._limits = limits or httpx.Limits()
        self._ssl = ssl_context if ssl_context is not None else httpx.create_ssl_context()
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        limits = self._limits
        connector = aiohttp.TCPConnector(
            limit=limits.max_connections or 0,
            keepalive_timeout=limits.keepalive_expiry or 0,
            force_close=limits.keepalive_expiry == 0,
            ssl=self._ssl,
        )
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,  # httpx decodes by Content-Encoding
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None:  # no await before the assignment: one session per transport
            self._session = self._open()
        body = await request.aread()
        with _translated():
            response = await self._session.request(
                request.method,
                str(request.url),
                headers=CIMultiDict(request.headers.multi_items()),
                data=body or None,
                allow_redirects=False,
                compress=None,
                timeout=_client_timeout(httpx.Timeout(**request.extensions.get("timeout", {}))),
            )
        extensions: dict[str, Any] = {
            "http_version": f"HTTP/{response.version.major}.{response.version.minor}".encode()
            if response.version
            else b"HTTP/1.1"
        }
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode("latin-1", "replace")
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_Body(response),
            request=request,
            extensions=extensions,
        )

    async def fetch(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        content: bytes | None,
        timeouts: httpx.Timeout,
    ) -> httpx.Response:
        """One request straight to aiohttp, its answer read whole: what an httpx client
        with this transport answers, without the client's request building, cookies, auth,
        redirects and hooks (a provider that uses none of them saves a third of the event
        loop's time per call). Only ``headers`` are sent (with Host, and Content-Length for
        ``content``); errors are httpx's, as for :meth:`handle_async_request`."""
        if self._session is None:
            self._session = self._open()
        with _translated():
            async with self._session.request(
                method,
                url,
                headers=headers,
                data=content,
                allow_redirects=False,
                compress=None,
                timeout=_client_timeout(timeouts),
            ) as response:
                body = await response.read()
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            content=body,  # decoded by its Content-Encoding, as httpx's own answers are
        )

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
            await asyncio.sleep(0)  # let closed TLS transports finish (aiohttp's advice)
