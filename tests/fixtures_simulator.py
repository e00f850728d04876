"""The DashScope simulator for the session, on a free loopback port, over real HTTP.

Fixtures:

- ``simulator`` (session): a running :class:`~qwbatch.simulator.SimulatorHandle` with the
  documented rules but rate limits at 1000 requests per second, so tests are not throttled
  unless they ask to be. Its key is ``SIM_API_KEY`` (also ``handle.api_key``).
- ``sim`` (function): the same handle after a reset — empty ledger and counters, no results
  or tasks, every knob back to the session defaults — so knobs a test flips stay in it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qwbatch.simulator import SimulatorConfig, SimulatorHandle, running

SIM_API_KEY = "sk-simulator-test-key"
#: Session defaults: the model table's rules, faithful images, no faults, high rate limits.
SIM_TEST_CONFIG = SimulatorConfig(api_key=SIM_API_KEY, rps=1000.0)


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimulatorHandle]:
    with running(SIM_TEST_CONFIG) as handle:
        yield handle


@pytest.fixture
def sim(simulator: SimulatorHandle) -> SimulatorHandle:
    simulator.reset(restore_config=True)
    return simulator
