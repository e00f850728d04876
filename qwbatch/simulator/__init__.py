"""A DashScope-compatible simulator of the Qwen-Image HTTP API, for demos, tests and benchmarks.

It speaks the documented API (docs/providers/dashscope.md) under ``/api/v1``, validates every
request against the model table, renders deterministic placeholder PNGs, keeps a billing
ledger, and injects faults (throttling, 5xx, dropped connections, corrupt images, errors in a
200, partial failures) with seeded probabilities.

::

    from qwbatch.simulator import SimulatorConfig, running

    with running(SimulatorConfig(fast=True, error_5xx_rate=0.05)) as sim:
        ...  # point the provider at sim.base_url
"""

from qwbatch.simulator.app import create_app
from qwbatch.simulator.config import SimulatorConfig, UsageStyle
from qwbatch.simulator.core import Simulator
from qwbatch.simulator.server import DEFAULT_PORT, SimulatorHandle, running, serve

__all__ = [
    "DEFAULT_PORT",
    "Simulator",
    "SimulatorConfig",
    "SimulatorHandle",
    "UsageStyle",
    "create_app",
    "running",
    "serve",
]
