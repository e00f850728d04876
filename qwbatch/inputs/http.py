"""Fetching edit inputs over HTTP(S) without letting a manifest reach what it should not.

A manifest is data, often written by someone else; a URL in it must not make a worker read
its cloud's metadata service (``169.254.169.254``), a database on the private network, or a
service on loopback. So for the URL and for every redirect hop:

- the scheme must be ``https`` (plain ``http`` only for a host on the allowlist), and the
  URL may not carry user info;
- the host name is resolved once and *every* address it resolves to must be public: not
  loopback, link-local, private, shared (CGNAT), multicast, reserved or unspecified, IPv4
  inside IPv6 included (mapped, NAT64, 6to4), by a table of our own rather than the
  interpreter's ``ipaddress`` flags, which differ between Python versions; unless the host
  is on the allowlist;
- the connection goes to an address that was checked: the request names the IP, and the
  host travels in ``Host`` and in TLS SNI, so the certificate is still verified against the
  name; a DNS answer that changes between check and connect (DNS rebinding) changes nothing.
  Such a connection is closed after its one request (``Connection: close``): the pool knows
  it by IP only, and must not hand it to a request for another name at the same address;
- redirects are followed by hand, at most ``max_redirects``, each hop checked the same way;
- the body is streamed (decoded) and abandoned past ``max_bytes``, and the whole fetch,
  redirects included, must end within ``timeout_s`` seconds.

``allow_hosts`` (``Settings.input_allow_hosts``) names hosts exempt from the address rule:
an internal asset server, or the loopback server of a test. Nothing is exempt by default.
Proxies from the environment are not used (``trust_env=False``).

Refusals raise :class:`~qwbatch.core.errors.InputError`; failures that may pass (timeouts,
429/5xx, connection resets, a DNS server that did not answer) raise
:class:`~qwbatch.core.errors.InputTransientError`. Messages never show a URL's query or user info.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType

import httpx

from qwbatch.core.errors import InputError, InputTransientError
from qwbatch.core.uris import url_without_secrets
from qwbatch.core.version import __version__

#: ``(host, port) -> addresses``: the name resolution seam (tests hand in a fixed table).
Resolver = Callable[[str, int], list[str]]

#: Largest body fetched by default (bytes): ``Settings.input_max_download_bytes``.
DEFAULT_MAX_BYTES = 50_000_000

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_ALLOW_SETTING = "QWBATCH_INPUT_ALLOW_HOSTS"
#: Non-public networks, our own table (from IANA's special-purpose address registries), so
#: the answer does not depend on the Python version: older ``ipaddress`` releases call some
#: of these global. First match wins; the adjective is what a refusal says.
_V4_TABLE: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), kind)
    for net, kind in (
        ("0.0.0.0/32", "unspecified"),
        ("0.0.0.0/8", "private"),  # "this network"
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "non-public"),  # shared address space (CGNAT)
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "reserved"),  # IETF protocol assignments
        ("192.0.2.0/24", "reserved"),  # documentation
        ("192.88.99.0/24", "reserved"),  # 6to4 relay anycast
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "reserved"),  # benchmarking
        ("198.51.100.0/24", "reserved"),  # documentation
        ("203.0.113.0/24", "reserved"),  # documentation
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # and the broadcast address
    )
)
_V6_TABLE: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), kind)
    for net, kind in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("64:ff9b:1::/48", "private"),  # local-use NAT64
        ("100::/64", "reserved"),  # discard-only
        ("2001::/23", "reserved"),  # IETF protocol assignments (Teredo included)
        ("2001:db8::/32", "reserved"),  # documentation
        ("3fff::/20", "reserved"),  # documentation
        ("5f00::/16", "reserved"),  # segment routing
        ("fc00::/7", "private"),  # unique local
        ("fe80::/10", "link-local"),
        ("fec0::/10", "private"),  # site-local (deprecated)
        ("ff00::/8", "multicast"),
    )
)
#: Only global unicast (2000::/3) is public in IPv6; the rest is unassigned or special.
_V6_GLOBAL = ipaddress.IPv6Network("2000::/3")


@dataclass(frozen=True, slots=True)
class FetchLimits:
    """Caps on one fetch: body bytes (after decoding), seconds in all, redirect hops."""

    max_bytes: int = DEFAULT_MAX_BYTES
    timeout_s: float = 30.0
    max_redirects: int = 5


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the operating system's resolver), in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def non_public_kind(address: str) -> str | None:
    """What kind of non-public address ``address`` is ("loopback" …), None when public.

    An IPv4 address carried inside an IPv6 one (mapped ``::ffff:a.b.c.d``, the deprecated
    compatible ``::a.b.c.d``, NAT64 ``64:ff9b::a.b.c.d``, 6to4 ``2002:AABB:CCDD::``) is
    judged as that IPv4 address: a router would deliver it there.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None:
            return _v4_kind(inner)
        for network, kind in _V6_TABLE:
            if ip in network:
                return kind
        return None if ip in _V6_GLOBAL else "reserved"
    return _v4_kind(ip)


def _v4_kind(ip: ipaddress.IPv4Address) -> str | None:
    for network, kind in _V4_TABLE:
        if ip in network:
            return kind
    return None


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    value = int(ip)
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:  # 2002::/16: the IPv4 address in bits 16..48
        return ip.sixtofour
    if value >> 32 == 0x0064_FF9B << 64:  # 64:ff9b::/96, NAT64's well-known prefix
        return ipaddress.IPv4Address(value & 0xFFFF_FFFF)
    if value >> 32 == 0 and value > 1:  # ::a.b.c.d, IPv4-compatible (deprecated)
        return ipaddress.IPv4Address(value & 0xFFFF_FFFF)
    return None


def display_url(url: str) -> str:
    """``url`` fit for a message: no user info, ``?…`` instead of the query, 200 chars."""
    shown = url_without_secrets(url)
    return shown if len(shown) <= 200 else shown[:199] + "…"


class HttpInputs:
    """Fetches http(s) inputs under the rules above. Thread-safe; close it when done.

    ``client`` replaces the default ``httpx.Client`` (tests pass one that trusts a local
    certificate authority); ``resolver`` replaces the operating system's name resolution.
    """

    def __init__(
        self,
        *,
        allow_hosts: Iterable[str] = (),
        limits: FetchLimits | None = None,
        client: httpx.Client | None = None,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.allow_hosts = frozenset(h.strip().strip("[]").lower() for h in allow_hosts if h)
        self.limits = limits or FetchLimits()
        self._owns_client = client is None
        self._client = client or httpx.Client(
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": f"qwbatch/{__version__} (edit-input fetch)"},
        )
        self._resolve = resolver

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> HttpInputs:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def fetch(self, url: str) -> bytes:
        """The body behind ``url`` after at most ``max_redirects`` checked redirects."""
        deadline = time.monotonic() + self.limits.timeout_s
        try:
            current = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise InputError(f"not a valid URL ({exc})") from None
        for hop in range(self.limits.max_redirects + 1):
            try:
                addresses = self._checked_addresses(current)
                outcome = self._get(current, addresses, deadline)
            except (InputError, InputTransientError) as exc:
                if hop == 0:
                    raise
                shown = display_url(str(current))
                raise type(exc)(f"redirected to {shown}: {exc.message}") from exc
            if isinstance(outcome, bytes):
                return outcome
            current = outcome
        raise InputError(f"more than {self.limits.max_redirects} redirects")

    # -- one hop -------------------------------------------------------------------------

    def _checked_addresses(self, url: httpx.URL) -> list[str]:
        """The addresses to connect to, each checked; InputError when the URL is refused."""
        host = url.host.lower()
        allowed = host in self.allow_hosts
        if url.scheme not in ("https", "http"):
            raise InputError(f"only https:// URLs are fetched, not {url.scheme}://")
        if url.scheme == "http" and not allowed:
            raise InputError(
                f"plain http:// is refused (use https://, or allow the host in {_ALLOW_SETTING})"
            )
        if url.userinfo:
            raise InputError("credentials in the URL are refused")
        if not host:
            raise InputError("the URL has no host")
        try:
            addresses = self._resolve(host, url.port or (443 if url.scheme == "https" else 80))
        except socket.gaierror as exc:
            if exc.errno == socket.EAI_AGAIN:
                raise InputTransientError(f"cannot resolve {host} now ({exc.strerror})") from exc
            raise InputError(f"cannot resolve {host} ({exc.strerror})") from exc
        except OSError as exc:
            raise InputTransientError(f"cannot resolve {host} ({exc.strerror})") from exc
        if not addresses:
            raise InputError(f"{host} resolves to no address")
        if not allowed:
            for address in addresses:
                kind = non_public_kind(address)
                if kind:
                    what = f"{address} is" if host == address else f"{host} resolves to {address},"
                    raise InputError(
                        f"{what} a {kind} address; only public addresses are fetched "
                        f"(allow the host in {_ALLOW_SETTING} to fetch it anyway)"
                    )
        return addresses

    def _get(self, url: httpx.URL, addresses: list[str], deadline: float) -> bytes | httpx.URL:
        """The body, or the next URL of a redirect; tries each checked address in turn."""
        failure: httpx.ConnectError | None = None
        for address in addresses:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            target, headers, extensions = _pinned(url, address)
            try:
                with self._client.stream(
                    "GET", target, headers=headers, extensions=extensions, timeout=remaining
                ) as response:
                    return self._read(url, response, deadline)
            except httpx.ConnectError as exc:
                if _is_tls_failure(exc):
                    raise InputError(f"TLS verification failed for {url.host}") from exc
                failure = exc  # this address did not answer: try the next one
            except httpx.TimeoutException as exc:
                raise InputTransientError(
                    f"no complete answer within {self.limits.timeout_s:g} s"
                ) from exc
            except httpx.HTTPError as exc:
                raise InputTransientError(f"fetch failed ({type(exc).__name__})") from exc
        if failure is None:
            raise InputTransientError(f"no complete answer within {self.limits.timeout_s:g} s")
        raise InputTransientError(f"cannot connect to {url.host}") from failure

    def _read(self, url: httpx.URL, response: httpx.Response, deadline: float) -> bytes | httpx.URL:
        status = response.status_code
        if status in _REDIRECTS:
            location = response.headers.get("location")
            if not location:
                raise InputError(f"HTTP {status} without a Location header")
            return url.join(location)
        if status != 200:
            if status in (408, 429) or status >= 500:
                raise InputTransientError(f"HTTP {status}")
            raise InputError(f"HTTP {status}")
        limit = self.limits.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise InputError(f"larger than {limit} bytes (Content-Length {declared})")
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise InputError(f"larger than {limit} bytes")
            if time.monotonic() > deadline:
                raise InputTransientError(f"no complete answer within {self.limits.timeout_s:g} s")
            chunks.append(chunk)
        return b"".join(chunks)


def _pinned(url: httpx.URL, address: str) -> tuple[httpx.URL, dict[str, str], dict[str, str]]:
    """The request for ``url`` sent to ``address``: (URL naming the IP, headers, extensions)."""
    host = url.raw_host.decode("ascii")
    if host.strip("[]") == address:
        return url, {}, {}
    netloc = host if url.port is None else f"{host}:{url.port}"
    extensions = {"sni_hostname": host} if url.scheme == "https" else {}
    # The pool keys connections by the IP in the URL; a connection verified for one name
    # must not carry a request for another name at the same address: never reuse it.
    headers = {"Host": netloc, "Connection": "close"}
    return url.copy_with(host=address.split("%", 1)[0]), headers, extensions


def _is_tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
