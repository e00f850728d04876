"""The FLUX (BFL) and GPT Image (OpenAI) simulators for the session, over real HTTP.

Fixtures ``bfl_sim`` and ``openai_sim`` (function scope) give a running simulator's handle
after a reset (empty ledger, knobs back to none); its key is :data:`PROVIDER_KEY`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qwbatch.simulator import SimulatorHandle, running
from qwbatch.simulator.bfl_app import BflConfig, create_bfl_app
from qwbatch.simulator.openai_app import create_openai_app

PROVIDER_KEY = "sk-provider-sim-SECRET-42"


@pytest.fixture(scope="session")
def _bfl_server() -> Iterator[SimulatorHandle]:
    with running(app=create_bfl_app(BflConfig(api_key=PROVIDER_KEY, sample_ttl_s=2.0))) as handle:
        yield handle


@pytest.fixture
def bfl_sim(_bfl_server: SimulatorHandle) -> SimulatorHandle:
    _bfl_server.reset()
    return _bfl_server


@pytest.fixture(scope="session")
def _openai_server() -> Iterator[SimulatorHandle]:
    with running(app=create_openai_app(api_key=PROVIDER_KEY)) as handle:
        yield handle


@pytest.fixture
def openai_sim(_openai_server: SimulatorHandle) -> SimulatorHandle:
    _openai_server.reset()
    return _openai_server
