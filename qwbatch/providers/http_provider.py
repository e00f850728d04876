"""What every HTTP provider client shares: the ``httpx.AsyncClient`` it calls through, its
base URL and its key.

The client is handed in (tests give a ``MockTransport`` or a local server) and is closed
only by the provider that made it (:meth:`HttpProvider.aclose`, or leaving ``async with``);
``from_settings`` makes one with :func:`settings_timeout`. The key goes only into request
headers: :meth:`HttpProvider._redact` takes it out of any text a provider echoes back, and
no ``repr`` shows it.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

import httpx

from qwbatch.core.settings import Settings


def settings_timeout(settings: Settings) -> httpx.Timeout:
    """The timeouts (seconds) of a client made from ``settings``: connect and read as set, 60 s
    to write a body, 30 s to wait for a free connection (which sends nothing, so a
    ``PoolTimeout`` is retried)."""
    return httpx.Timeout(
        connect=settings.connect_timeout_s, read=settings.read_timeout_s, write=60.0, pool=30.0
    )


class HttpProvider:
    """The base of the provider clients: the client, the base URL (no trailing ``/``) and the
    key; an async context manager that closes the client when ``owns_client``."""

    def __init__(
        self, *, client: httpx.AsyncClient, base_url: str, api_key: str, owns_client: bool = False
    ) -> None:
        self._client = client
        self._owns_client = owns_client
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _redact(self, text: str) -> str:
        """``text`` (a provider's message, which may echo a bad key) without our key."""
        return text.replace(self._api_key, "<hidden>") if self._api_key else text
