"""A real web server on loopback for edit inputs: plain HTTP, and HTTPS with a test CA.

Fixtures:

- ``web`` (function): a :class:`WebServer` on ``127.0.0.1`` over plain HTTP. Add routes with
  ``web.route(path, body=…, status=…, headers=…, chunks=…, delay_s=…)``; ``web.hits[path]``
  counts the requests each path received; ``web.url(path)`` is the full URL.
- ``tls_web`` (function): the same over HTTPS, its certificate (for ``qwbatch.test`` and
  ``127.0.0.1``) signed by a throwaway CA; ``tls_web.ca_context`` is an ``ssl.SSLContext``
  that trusts that CA, for an ``httpx.Client(verify=…)``.

qwbatch refuses loopback and plain http by default: tests allow the host explicitly
(``input_allow_hosts=["127.0.0.1"]``), exactly as a user would for an internal server.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

#: The name the HTTPS server's certificate is issued for (tests resolve it to 127.0.0.1).
TLS_HOST = "qwbatch.test"


@dataclass
class Route:
    """One canned answer. ``chunks`` > 1 sends the body chunked, ``delay_s`` between chunks."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    chunks: int = 1
    delay_s: float = 0.0


class WebServer:
    """A threaded HTTP(S) server answering from a route table, counting hits per path."""

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        #: The Host header of each request, in order.
        self.hosts: list[str] = []
        self.ca_context: ssl.SSLContext | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # the stdlib's naming
                path = self.path.split("?", 1)[0]
                server.hits[path] += 1
                server.hosts.append(self.headers.get("Host", ""))
                route = server.routes.get(path, Route(b"not found", 404))
                self.send_response(route.status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                if route.chunks > 1:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    step = max(1, len(route.body) // route.chunks)
                    for start in range(0, len(route.body), step):
                        piece = route.body[start : start + step]
                        self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                        self.wfile.flush()
                        time.sleep(route.delay_s)
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.send_header("Content-Length", str(len(route.body)))
                    self.end_headers()
                    self.wfile.write(route.body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if context is not None:
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.scheme = "https" if context is not None else "http"
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def route(self, path: str, body: bytes = b"", **options: object) -> str:
        """Serve ``body`` (and options, see :class:`Route`) at ``path``; its URL."""
        self.routes[path] = Route(body, **options)  # type: ignore[arg-type]
        return self.url(path)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for TLS_HOST and 127.0.0.1: (ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qwbatch test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TLS_HOST)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(TLS_HOST), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture
def web() -> Iterator[WebServer]:
    server = WebServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return _certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_web(tls_files: tuple[Path, Path, Path]) -> Iterator[WebServer]:
    ca, cert, key = tls_files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = WebServer(context)
    server.ca_context = ssl.create_default_context(cafile=str(ca))
    try:
        yield server
    finally:
        server.close()
