"""The aiohttp transport keeps httpx's meaning of every failure (before send or not).

Each failure is staged by a raw asyncio server on loopback, and each test runs under both
transports: the provider must classify a failure the same way whichever one sends.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import httpx
import pytest
from support import KEY

from qwbatch.core.errors import ProviderAmbiguousError, ProviderError, ProviderTransientError
from qwbatch.core.settings import Settings
from qwbatch.core.types import RenderRequest
from qwbatch.providers.aiohttp_transport import AiohttpTransport, translate
from qwbatch.providers.dashscope import DashScopeProvider

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["aiohttp", "httpcore"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's head and body (Content-Length), as bytes."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + (await reader.readexactly(length) if length else b"")


class Server:
    """A loopback TCP server running ``handler`` for each connection; its URL on entry."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()


def settings(transport: str, **overrides: float) -> Settings:
    return Settings(
        dashscope_api_key=KEY,
        http_transport=transport,
        connect_timeout_s=overrides.get("connect", 2.0),
        read_timeout_s=overrides.get("read", 2.0),
        max_in_flight=int(overrides.get("in_flight", 8)),
    )


@asynccontextmanager
async def provider_for(
    transport: str, base_url: str, **overrides: float
) -> AsyncIterator[DashScopeProvider]:
    """A provider made as runs make it (``from_settings``), sending to ``base_url``."""
    provider = DashScopeProvider.from_settings(settings(transport, **overrides))
    provider._base_url = base_url  # the server under test stands in for the region's host
    async with provider:
        yield provider


def request() -> RenderRequest:
    return RenderRequest(
        row_id="r1",
        row_number=0,
        request_key="k1",
        model="qwen-image-2.0",
        mode="generate",
        prompt="a lighthouse",
        size="512*512",
        n=1,
        seed=7,
    )


async def answer(writer: asyncio.StreamWriter, status: str, body: bytes, *extra: str) -> None:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *extra, "", ""]
    writer.write("\r\n".join(head).encode() + body)
    await writer.drain()


GENERATED = json.dumps(
    {
        "request_id": "req-1",
        "output": {
            "choices": [
                {
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": [{"image": "http://x/a.png"}]},
                }
            ]
        },
        "usage": {"image_count": 1, "width": 512, "height": 512},
    }
).encode()


async def test_a_refused_connection_is_before_send(transport: str) -> None:
    async with Server(lambda r, w: asyncio.sleep(0)) as base_url:
        pass  # closed: nothing listens on its port any more
    async with provider_for(transport, base_url) as provider:
        with pytest.raises(ProviderTransientError, match="ConnectError before the request"):
            await provider.generate(request())


async def test_a_connection_closed_after_the_post_is_ambiguous(transport: str) -> None:
    seen: list[bytes] = []

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))

    async with Server(hang_up) as base_url, provider_for(transport, base_url) as provider:
        with pytest.raises(ProviderAmbiguousError, match="may have been billed"):
            await provider.generate(request())
    assert len(seen) == 1
    assert seen[0].startswith(b"POST /services/aigc/multimodal-generation/generation")


async def test_no_answer_in_time_is_a_read_timeout_and_ambiguous(transport: str) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async with Server(stall) as base_url, provider_for(transport, base_url, read=0.3) as provider:
        with pytest.raises(ProviderAmbiguousError, match="ReadTimeout after the request was sent"):
            await provider.generate(request())


async def test_a_cut_body_is_a_transient_download_error(transport: str) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        await writer.drain()

    async with Server(cut) as base_url, provider_for(transport, base_url) as provider:
        with pytest.raises(ProviderTransientError) as caught:
            await provider.download(f"{base_url}/a.png?Signature=sig-SECRET")
    assert "SECRET" not in str(caught.value)
    assert not isinstance(caught.value, ProviderAmbiguousError)


async def test_waiting_for_a_pooled_connection_times_out_before_send(transport: str) -> None:
    """One connection, held by a stalled call: the next call's wait is a before-send error."""
    seen: list[bytes] = []
    arrived = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        arrived.set()
        await asyncio.sleep(5)

    async with Server(stall) as base_url:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        timeout = httpx.Timeout(3.0, pool=0.3, connect=0.3)
        direct = AiohttpTransport(limits=limits) if transport == "aiohttp" else None
        async with httpx.AsyncClient(timeout=timeout, limits=limits, transport=direct) as client:
            provider = DashScopeProvider(
                client=client, base_url=base_url, api_key=KEY, direct=direct
            )
            held = asyncio.create_task(provider.generate(request()))
            await arrived.wait()
            with pytest.raises(ProviderTransientError, match="before the request was sent"):
                await provider.generate(request())
            held.cancel()
            with pytest.raises(asyncio.CancelledError):
                await held
    assert len(seen) == 1


async def test_answers_are_decoded_and_headers_sent_once(transport: str) -> None:
    heads: list[bytes] = []

    async def gzipped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not reader.at_eof():  # keep-alive: answer every request on the connection
            heads.append(await read_request(reader))
            await answer(
                writer,
                "200 OK",
                gzip.compress(GENERATED),
                "Content-Type: application/json",
                "Content-Encoding: gzip",
                "Set-Cookie: session=abc",
            )

    async with Server(gzipped) as base_url, provider_for(transport, base_url) as provider:
        result = await provider.generate(request())
        await provider.generate(request())
    assert [image.url for image in result.images] == ["http://x/a.png"]
    assert len(heads) == 2
    for head in heads:
        lines = [line.lower() for line in head.split(b"\r\n")]
        for header in (b"user-agent:", b"authorization:", b"host:", b"content-length:"):
            assert sum(line.startswith(header) for line in lines) == 1, (header, head)
        # Cookies are httpx's alone: never a second jar's copy.
        assert sum(line.startswith(b"cookie:") for line in lines) <= 1


def test_errors_that_may_name_a_url_keep_only_their_class() -> None:
    secret = "http://oss.example/a.png?Signature=sig-SECRET"
    translated = translate(aiohttp.InvalidURL(secret))
    assert isinstance(translated, httpx.UnsupportedProtocol)
    assert "SECRET" not in str(translated)
    written = translate(aiohttp.ClientOSError(None, f"Can not write request body for {secret}"))
    assert isinstance(written, httpx.ReadError)
    assert "SECRET" not in str(written)
    dropped = translate(aiohttp.ServerDisconnectedError())
    assert isinstance(dropped, httpx.RemoteProtocolError)
    assert "Server disconnected" in str(dropped)


@pytest.mark.parametrize(
    "url", ["http://[::1/a.png?Signature=sig-SECRET", "ftp://example.com/a.png", "not a url"]
)
async def test_a_url_that_cannot_be_fetched_is_refused_not_retried(
    transport: str, url: str
) -> None:
    async with provider_for(transport, "http://127.0.0.1:9") as provider:
        with pytest.raises(ProviderError) as caught:
            await provider.download(url)
    assert not isinstance(caught.value, ProviderTransientError)
    assert "SECRET" not in str(caught.value)
