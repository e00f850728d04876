"""Fixtures the simulator's test modules share (request builders: ``simulator_helpers``)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from qwbatch.simulator import SimulatorHandle


@pytest.fixture
def client(sim: SimulatorHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, headers=sim.auth_headers(), timeout=10) as c:
        yield c
