"""The run's flow judging its shard flow runs from their leases (flows.fanout._Waiter): a
run that renders and goes silent for three lease lifetimes is lost and started again; one
still starting (``Pending``: its process, container or pod coming up) is given longer."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect.client.schemas.objects import FlowRun
from prefect.states import Pending, Running, State

from flows.fanout import START_GRACE_S, _Child, _Waiter
from qwbatch.core.settings import Settings
from qwbatch.storage.stores import open_store

TTL_S = 10.0  # three lease lifetimes: 30 s
GROUP = ["runs/r/shards/shard-00000.jsonl"]


class Server:
    """The Prefect client's one call the waiter makes when it judges a run lost."""

    def __init__(self) -> None:
        self.states: list[tuple[uuid.UUID, State]] = []

    def set_flow_run_state(self, run_id: uuid.UUID, state: State, force: bool) -> None:
        self.states.append((run_id, state))


def judge(tmp_path: Path, state: State) -> tuple[Any, Server, list[list[str]]]:
    settings = Settings(lease_ttl_s=TTL_S)
    run = FlowRun(id=uuid.uuid4(), name="r-00000", flow_id=uuid.uuid4(), state=state)
    resubmitted: list[list[str]] = []

    def submit(index: int, shards: list[str], attempt: int) -> FlowRun:
        resubmitted.append(shards)
        return FlowRun(id=uuid.uuid4(), name=f"r-00000-r{attempt}", flow_id=run.flow_id)

    waiter = _Waiter(
        {run.id: _Child(0, GROUP, 0)},
        open_store(str(tmp_path), settings),
        settings,
        submit,
        logger=logging.getLogger("test"),
    )
    server = Server()
    return waiter._look(server, run, check=True), server, resubmitted


def ago(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


def test_a_running_shard_flow_run_silent_for_three_lease_lifetimes_is_run_again(
    tmp_path: Path,
) -> None:
    outcome, server, resubmitted = judge(tmp_path, Running(timestamp=ago(5 * TTL_S)))
    assert isinstance(outcome, uuid.UUID)  # the replacement's id
    assert resubmitted == [GROUP]
    ((_, crashed),) = server.states
    assert crashed.type.value == "CRASHED"
    assert "no sign of life" in (crashed.message or "")


def test_a_shard_flow_run_still_starting_is_not_judged_by_lease_lifetimes(
    tmp_path: Path,
) -> None:
    # Pending for 5 minutes (an image pull, a node scaling up): not lost yet.
    outcome, server, resubmitted = judge(tmp_path, Pending(timestamp=ago(300)))
    assert (outcome, server.states, resubmitted) == ("waiting", [], [])
    # Past the start grace it is.
    outcome, server, resubmitted = judge(tmp_path, Pending(timestamp=ago(START_GRACE_S + 30)))
    assert isinstance(outcome, uuid.UUID)
    assert resubmitted == [GROUP]


def test_a_shard_flow_run_that_just_started_is_waited_for(tmp_path: Path) -> None:
    outcome, _, _ = judge(tmp_path, Running(timestamp=datetime.fromtimestamp(time.time(), UTC)))
    assert outcome == "waiting"
