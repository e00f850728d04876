"""The circuit breaker, against the simulator over HTTP and a closed port: a run whose first
calls are all refused account-wide (a wrong key, arrears) or never connect stops after a
few probes, leaves every row unrendered (not failed) and says why; the next run, with the
cause fixed, renders them all, each billed once."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from local_run import fast_settings, render_all

from qwbatch.catalog.table import read_catalog
from qwbatch.core.errors import ProviderUnavailableError, QwBatchError
from qwbatch.core.stop import StopSignal
from qwbatch.render.breaker import PROBES, Breaker
from qwbatch.storage.stores import LocalStore

ROWS = 30


def _manifest(path: Path) -> Path:
    models = ["qwen-image-plus" if i % 2 else "qwen-image-2.0" for i in range(ROWS)]
    prompts = [f"breaker test {i}: a lighthouse in fog" for i in range(ROWS)]
    ids = [f"row-{i:03d}" for i in range(ROWS)]
    pq.write_table(pa.table({"id": ids, "prompt": prompts, "model": models}), path)
    return path


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the socket is: refused


def _calls(sim) -> int:
    requests = sim.ledger()["requests"]
    return requests.get("generation", 0) + requests.get("image-synthesis", 0)


@pytest.mark.parametrize("cause", ["wrong key", "arrears", "connection refused"])
def test_a_run_whose_first_calls_all_fail_account_wide_stops_after_a_few_probes(
    sim, tmp_path: Path, cause: str
) -> None:
    sim.configure(fast=True, arrears=cause == "arrears")
    manifest = _manifest(tmp_path / "m.parquet")
    out = str(tmp_path / "out")
    bad = {
        "wrong key": {"dashscope_api_key": "sk-wrong-key"},
        "arrears": {},
        "connection refused": {"dashscope_base_url": f"http://127.0.0.1:{_closed_port()}"},
    }[cause]
    settings = fast_settings(sim, sim.api_key, shard_size=10, **bad)
    stop = StopSignal()

    began = time.monotonic()
    stopped = render_all(manifest, out, settings, stop=stop)
    took = time.monotonic() - began

    print(f"\n{cause}: stopped after {took:.1f} s, {_calls(sim)} calls reached the simulator")
    assert took < 10, f"stopped after {took:.1f} s"
    assert _calls(sim) <= PROBES  # the simulator counts refused calls too
    assert stopped.left == ROWS
    assert stopped.failed == 0
    assert stopped.stopped_by is not None
    assert stopped.stopped_by.startswith("the provider, which refused or could not be reached")
    assert "sk-wrong-key" not in stopped.stopped_by
    assert {
        "wrong key": "InvalidApiKey",
        "arrears": "Arrearage",
        "connection refused": "ConnectError",
    }[cause] in stopped.stopped_by
    assert read_catalog(LocalStore(out)).num_rows == 0  # nothing recorded as failed

    sim.configure(arrears=False)
    finished = render_all(manifest, out, fast_settings(sim, sim.api_key, shard_size=10))
    assert (finished.run_id, finished.left, finished.failed) == (stopped.run_id, 0, 0)
    billed = Counter(e["prompt_sha256"] for e in sim.ledger()["entries"])
    assert len(billed) == ROWS
    assert set(billed.values()) == {1}


def test_one_success_opens_the_gate_and_failures_in_a_row_trip_it() -> None:
    breaker = Breaker(probes=2)

    async def enter() -> None:
        async with breaker.probe():
            pass

    asyncio.run(enter())
    refused = QwBatchError("HTTP 401 InvalidApiKey")
    assert not breaker.failed(refused)
    breaker.succeeded()  # a success in between: failures count again from zero
    assert not breaker.failed(refused)
    assert breaker.failed(refused)
    with pytest.raises(ProviderUnavailableError, match="InvalidApiKey"):
        asyncio.run(enter())
