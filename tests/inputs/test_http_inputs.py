"""Safe fetching of http(s) inputs, against a real server on loopback (HTTP and HTTPS).

Refusals of private, loopback and link-local addresses happen before any connection, so
they need no server at all; a name resolution seam maps test host names to addresses.
"""

from __future__ import annotations

import socket

import httpx
import pytest
from fixtures_web import TLS_HOST, WebServer

from qwbatch.core.errors import InputError, InputTransientError
from qwbatch.inputs.http import FetchLimits, HttpInputs, display_url, non_public_kind

PNG_ISH = b"\x89PNG\r\n\x1a\n" + b"x" * 1000


def table_resolver(table: dict[str, list[str]]):
    """A resolver answering from ``table`` (IP literals resolve to themselves)."""

    def resolve(host: str, port: int) -> list[str]:
        if host in table:
            return table[host]
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        except OSError:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
        return [host]

    return resolve


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.9.9.9", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1%eth0", "link-local"),
        ("10.0.0.5", "private"),
        ("172.16.3.4", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("::ffff:10.0.0.1", "private"),
        ("100.64.0.1", "non-public"),  # shared address space (CGNAT)
        ("224.0.0.1", "multicast"),
        ("0.1.2.3", "private"),  # "this network": Python files it as private
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        # Our own table, whatever the interpreter's ipaddress says (older ones: "global").
        ("192.0.0.8", "reserved"),
        ("192.0.0.170", "reserved"),
        ("198.18.0.1", "reserved"),
        ("2002:c0a8:0101::1", "private"),  # 6to4 around 192.168.1.1
        ("2002:a9fe:a9fe::", "link-local"),  # 6to4 around 169.254.169.254
        ("2002:7f00:0001::", "loopback"),  # 6to4 around 127.0.0.1
        ("2002:0808:0808::1", None),  # 6to4 around a public address
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 around the metadata service
        ("::127.0.0.1", "loopback"),  # IPv4-compatible (deprecated)
        ("2001:db8::1", "reserved"),  # documentation
        ("4000::1", "reserved"),  # outside global unicast
    ],
)
def test_address_kinds(address: str, kind: str | None) -> None:
    assert non_public_kind(address) == kind


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://127.0.0.1/a.png", "127.0.0.1 is a loopback address"),
        ("https://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("https://10.0.0.5/a.png", "10.0.0.5 is a private address"),
        ("https://[::1]/a.png", "::1 is a loopback address"),
        ("https://[::ffff:169.254.169.254]/", "is a link-local address"),
        ("https://localhost/a.png", "localhost resolves to 127.0.0.1, a loopback address"),
        ("https://assets.internal/a.png", "resolves to 10.1.2.3, a private address"),
        # one bad address among good ones is enough to refuse
        ("https://mixed.example/a.png", "resolves to 192.168.0.7, a private address"),
        ("http://8.8.8.8/a.png", "plain http:// is refused"),
        ("https://user:hunter2@8.8.8.8/a.png", "credentials in the URL are refused"),
        ("ftp://8.8.8.8/a.png", "only https:// URLs"),
        ("https://no-such-host.invalid/a.png", "cannot resolve no-such-host.invalid"),
    ],
)
def test_refused_before_any_connection(url: str, reason: str) -> None:
    resolver = table_resolver(
        {
            "localhost": ["127.0.0.1"],
            "assets.internal": ["10.1.2.3"],
            "mixed.example": ["93.184.216.34", "192.168.0.7"],
        }
    )

    # A client whose every connection attempt fails the test: nothing may be sent.
    def refuse(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"connected to {request.url}")

    with httpx.Client(transport=httpx.MockTransport(refuse)) as client:
        fetcher = HttpInputs(client=client, resolver=resolver)
        with pytest.raises(InputError, match=reason) as caught:
            fetcher.fetch(url)
    assert "hunter2" not in str(caught.value)


def test_allowlisted_loopback_http_is_fetched(web: WebServer) -> None:
    url = web.route("/mug.png", PNG_ISH)
    with HttpInputs() as default, pytest.raises(InputError, match="plain http:// is refused"):
        default.fetch(url)
    with HttpInputs(allow_hosts=["127.0.0.1"]) as fetcher:
        assert fetcher.fetch(url) == PNG_ISH
    assert web.hits["/mug.png"] == 1


def test_connection_goes_to_the_checked_address(web: WebServer) -> None:
    """The host is resolved once, by us, and the request goes to that address.

    ``pinned.test`` exists only in our resolver: a client that resolved the name again (and
    so could be rebound to another address) would fail to connect at all.
    """
    web.route("/a.png", PNG_ISH)
    resolver = table_resolver({"pinned.test": ["127.0.0.1"]})
    with HttpInputs(allow_hosts=["pinned.test"], resolver=resolver) as fetcher:
        assert fetcher.fetch(web.url("/a.png", host="pinned.test")) == PNG_ISH
    assert web.hosts == [f"pinned.test:{web.port}"]


def test_https_with_pinned_address_verifies_the_certificate_name(tls_web: WebServer) -> None:
    tls_web.route("/a.png", PNG_ISH)
    resolver = table_resolver({TLS_HOST: ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    with httpx.Client(verify=tls_web.ca_context, trust_env=False) as client:
        fetcher = HttpInputs(allow_hosts=[TLS_HOST, "other.test"], client=client, resolver=resolver)
        assert fetcher.fetch(tls_web.url("/a.png", host=TLS_HOST)) == PNG_ISH
        # Same address, a name the certificate does not cover: refused, not fetched.
        with pytest.raises(InputError, match=r"TLS verification failed for other\.test"):
            fetcher.fetch(tls_web.url("/a.png", host="other.test"))
    assert tls_web.hits["/a.png"] == 1


def test_https_loopback_is_refused_unless_allowed(tls_web: WebServer) -> None:
    url = tls_web.route("/a.png", PNG_ISH)
    with httpx.Client(verify=tls_web.ca_context) as client:
        with pytest.raises(InputError, match="loopback address"):
            HttpInputs(client=client).fetch(url)
        assert HttpInputs(client=client, allow_hosts=["127.0.0.1"]).fetch(url) == PNG_ISH
    assert tls_web.hits["/a.png"] == 1


def test_redirects_are_followed_and_each_hop_is_checked(web: WebServer) -> None:
    web.route("/final.png", PNG_ISH)
    web.route("/hop", status=302, headers={"Location": "/final.png"})
    web.route("/to-metadata", status=301, headers={"Location": "https://169.254.169.254/x?t=1"})
    web.route("/to-other-loopback", status=307, headers={"Location": "http://127.0.0.2/a.png"})
    web.route("/loop", status=302, headers={"Location": "/loop"})
    with HttpInputs(allow_hosts=["127.0.0.1"]) as fetcher:
        assert fetcher.fetch(web.url("/hop")) == PNG_ISH
        with pytest.raises(InputError) as caught:
            fetcher.fetch(web.url("/to-metadata"))
        assert str(caught.value) == (
            "redirected to https://169.254.169.254/x?…: 169.254.169.254 is a link-local "
            "address; only public addresses are fetched (allow the host in "
            "QWBATCH_INPUT_ALLOW_HOSTS to fetch it anyway)"
        )
        with pytest.raises(
            InputError, match=r"redirected to http://127\.0\.0\.2/a\.png: plain http"
        ):
            fetcher.fetch(web.url("/to-other-loopback"))
        with pytest.raises(InputError, match="more than 5 redirects"):
            fetcher.fetch(web.url("/loop"))
    assert web.hits["/loop"] == 6


def test_size_cap_by_header_and_while_streaming(web: WebServer) -> None:
    declared = web.route("/declared.png", b"x" * 5000)
    chunked = web.route("/chunked.png", b"x" * 5000, chunks=10)
    limits = FetchLimits(max_bytes=4000)
    with HttpInputs(allow_hosts=["127.0.0.1"], limits=limits) as fetcher:
        with pytest.raises(InputError, match=r"larger than 4000 bytes \(Content-Length 5000\)"):
            fetcher.fetch(declared)
        with pytest.raises(InputError, match=r"larger than 4000 bytes$"):
            fetcher.fetch(chunked)
        web.route("/small.png", b"x" * 4000, chunks=4)
        assert len(fetcher.fetch(web.url("/small.png"))) == 4000


def test_time_cap_covers_a_slow_drip(web: WebServer) -> None:
    # Each chunk arrives well within any per-read timeout; the whole body never would.
    url = web.route("/slow.png", b"x" * 40, chunks=40, delay_s=0.05)
    limits = FetchLimits(timeout_s=0.3)
    fetcher = HttpInputs(allow_hosts=["127.0.0.1"], limits=limits)
    with fetcher, pytest.raises(InputTransientError, match=r"no complete answer within 0\.3 s"):
        fetcher.fetch(url)


@pytest.mark.parametrize(
    ("status", "error"),
    [(404, InputError), (403, InputError), (429, InputTransientError), (503, InputTransientError)],
)
def test_status_codes_are_classified(web: WebServer, status: int, error: type[Exception]) -> None:
    url = web.route("/x.png", b"nope", status=status)
    fetcher = HttpInputs(allow_hosts=["127.0.0.1"])
    with fetcher, pytest.raises(error, match=f"HTTP {status}"):
        fetcher.fetch(url)


def test_connection_refused_is_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    fetcher = HttpInputs(allow_hosts=["127.0.0.1"])
    with fetcher, pytest.raises(InputTransientError, match=r"cannot connect to 127\.0\.0\.1"):
        fetcher.fetch(f"http://127.0.0.1:{port}/a.png")


def test_display_url_hides_query_and_credentials() -> None:
    assert display_url("https://u:p@host.example:8443/a/b.png?X-Amz-Signature=abc") == (
        "https://host.example:8443/a/b.png?…"
    )
