"""Shared test set-up: real local servers (moto S3, the DashScope simulator, Prefect)."""

from __future__ import annotations

# Fixtures live in one module per real part; each module owns its server's lifecycle.
pytest_plugins = [
    "fixtures_s3",
    "fixtures_simulator",
    "fixtures_prefect",
    "fixtures_web",
    "fixtures_providers",
]
