"""A real S3 HTTP endpoint for the session: moto in server mode on a free loopback port.

Fixtures:

- ``moto_server`` (session): the endpoint URL, e.g. ``http://127.0.0.1:41234``.
- ``aws_credentials`` (function): fake credentials and region in the environment for one
  test only, with every other AWS setting that could redirect or slow boto3 cleared.
- ``s3_settings`` (function): ``Settings`` aimed at the server, path-style addressing.
- ``boto_session`` (session): one boto3 session, so new clients are cheap (~10 ms, not 0.3 s).
- ``s3_client`` (function): a new client built the production way (``make_s3_client``), so a
  test may hang botocore event hooks on it.
- ``s3_bucket`` (function): a fresh, uniquely named, empty bucket.
- ``outage_s3`` (function): a moto server of the test's own, which the test may ``stop()``
  and ``start()`` again on the same port (a store outage); buckets survive the restart.

``seed_objects`` fills a bucket without HTTP, for tests that need thousands of objects.

Buckets are not deleted afterwards: moto keeps them in memory until the session ends, and
unique names keep tests apart.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import boto3
import pytest
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from moto.server import ThreadedMotoServer

from qwbatch.core.settings import Settings
from qwbatch.storage.stores import make_s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: Fake credentials, distinctive so tests can prove they never reach an error message.
FAKE_ACCESS_KEY_ID = "qwbatch-fake-access-key-id"
FAKE_SECRET_ACCESS_KEY = "qwbatch-fake-secret-access-key"
REGION = "us-east-1"

# Environment that would make boto3 look elsewhere for credentials, endpoints or regions.
_AWS_ENV_CLEARED = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_REQUEST_CHECKSUM_CALCULATION",
    "AWS_RESPONSE_CHECKSUM_VALIDATION",
)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """Start moto's S3 server on 127.0.0.1 (a port the OS picks) and yield its URL."""
    werkzeug_log = logging.getLogger("werkzeug")
    level = werkzeug_log.level
    werkzeug_log.setLevel(logging.WARNING)  # one access-log line per request is noise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        werkzeug_log.setLevel(level)


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake AWS credentials for this test only; no profile, config file or IMDS look-ups."""
    for name in _AWS_ENV_CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET_ACCESS_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3_settings(moto_server: str, aws_credentials: None) -> Settings:
    """Settings whose object store is the moto server."""
    return Settings(s3_endpoint_url=moto_server, s3_region=REGION, s3_addressing_style="path")


@pytest.fixture(scope="session")
def boto_session() -> boto3.session.Session:
    """One boto3 session for the test session: clients from it share the loaded S3 model."""
    return boto3.session.Session()


@pytest.fixture
def s3_client(s3_settings: Settings, boto_session: boto3.session.Session) -> S3Client:
    """A new boto3 S3 client built as production builds it, aimed at the moto server."""
    return make_s3_client(s3_settings, session=boto_session)


@pytest.fixture
def s3_bucket(s3_client: S3Client) -> str:
    """A new empty bucket on the moto server; its name."""
    name = f"qwbatch-test-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    return name


def seed_objects(bucket: str, keys: list[str], body: bytes = b"") -> None:
    """Create objects straight in moto's in-process backend: about 1000× faster than HTTP.

    Only for test data whose creation is not under test; the code under test still talks to
    the server over HTTP. (The server shares this process, and so this backend.)
    """
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for key in keys:
        backend.put_object(bucket, key, body)


class RestartableMoto:
    """A moto S3 server on a fixed loopback port that can go away and come back."""

    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        self.host, self.port = self._server.get_host_and_port()
        self.url = f"http://{self.host}:{self.port}"
        self.running = True

    def stop(self) -> None:
        """Close the listening socket: clients get 'connection refused' until ``start``."""
        self._server.stop()
        self.running = False

    def start(self) -> None:
        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()
        self.running = True


@pytest.fixture
def outage_s3(aws_credentials: None) -> Iterator[RestartableMoto]:
    werkzeug_log = logging.getLogger("werkzeug")
    level = werkzeug_log.level
    werkzeug_log.setLevel(logging.WARNING)
    server = RestartableMoto()
    try:
        yield server
    finally:
        if server.running:
            server.stop()
        werkzeug_log.setLevel(level)
