"""The DashScope simulator for the session, on a free loopback port, over real HTTP.

Fixtures:

- ``simulator`` (session): a running :class:`~qwbatch.simulator.SimulatorHandle` with the
  documented rules but rate limits at 1000 requests per second, so tests are not throttled
  unless they ask to be. Its key is ``support.KEY`` (also ``handle.api_key``).
- ``sim`` (function): the same handle after a reset — empty ledger and counters, no results
  or tasks, every knob back to the session defaults — so knobs a test flips stay in it.
- ``sim_env`` (function): ``sim``, with the environment aimed at it (its URL and the key), as
  the CLI, the Python API and flows read it.
- ``fast_sim_env`` (function): ``sim_env`` at test speed (backoff 10-50 ms, polls every 50 ms,
  and the model table's rates, one or two requests per second, lifted to ``support.TEST_SPEED``'s).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import KEY, TEST_SPEED

from qwbatch.simulator import SimulatorConfig, SimulatorHandle, running

#: Session defaults: the model table's rules, faithful images, no faults, high rate limits.
SIM_TEST_CONFIG = SimulatorConfig(api_key=KEY, rps=1000.0)


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimulatorHandle]:
    with running(SIM_TEST_CONFIG) as handle:
        yield handle


@pytest.fixture
def sim(simulator: SimulatorHandle) -> SimulatorHandle:
    simulator.reset(restore_config=True)
    return simulator


@pytest.fixture
def sim_env(sim: SimulatorHandle, monkeypatch: pytest.MonkeyPatch) -> SimulatorHandle:
    monkeypatch.setenv("QWBATCH_DASHSCOPE_BASE_URL", sim.base_url)
    monkeypatch.setenv("DASHSCOPE_API_KEY", sim.api_key)
    return sim


@pytest.fixture
def fast_sim_env(sim_env: SimulatorHandle, monkeypatch: pytest.MonkeyPatch) -> SimulatorHandle:
    monkeypatch.setenv("QWBATCH_BACKOFF_BASE_S", "0.01")
    monkeypatch.setenv("QWBATCH_BACKOFF_MAX_S", "0.05")
    monkeypatch.setenv("QWBATCH_POLL_INTERVAL_S", "0.05")
    # The model table's rates (1-2 requests per second) are what a real account allows; a
    # test of rendering itself need not wait for them (tests/limits tests the limits).
    monkeypatch.setenv("QWBATCH_RPS", str(TEST_SPEED["rps"]))
    monkeypatch.setenv("QWBATCH_MAX_IN_FLIGHT", str(TEST_SPEED["max_in_flight"]))
    return sim_env
