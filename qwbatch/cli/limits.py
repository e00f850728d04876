"""``qwbatch limits``: each model's request limits, where they come from, and how they are
shared (with a Prefect server configured, what the server holds right now)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from typing import Annotated

import typer

from qwbatch.cli.app import _fail, app
from qwbatch.core.errors import QwBatchError
from qwbatch.core.settings import Settings


@app.command("limits")
def limits_command(
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="Only these models (repeatable)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON")] = False,
) -> None:
    """Show each model's requests per second and in-flight cap, their source, and sharing."""
    from qwbatch.limits.prefect_limit import read_shared_state
    from qwbatch.limits.registry import limit_rows, limit_scope, local_reason
    from qwbatch.runs.runner import model_table

    settings = Settings()
    try:
        rows = limit_rows(model_table(settings), settings)
        scope = limit_scope(settings)
    except QwBatchError as exc:
        _fail(str(exc))
        return
    if model:
        unknown = sorted(set(model) - {row.model for row in rows})
        if unknown:
            _fail(f"unknown model(s): {', '.join(unknown)}")
        rows = [row for row in rows if row.model in model]
    reason = local_reason(settings)
    states = {}
    if reason is None:
        states = {row.model: asyncio.run(read_shared_state(scope, row.model)) for row in rows}
    if as_json:
        out = [
            {
                **asdict(row),
                "shared": reason is None,
                "server": asdict(state) if (state := states.get(row.model)) else None,
            }
            for row in rows
        ]
        typer.echo(json.dumps({"scope": scope, "local_reason": reason, "models": out}, indent=2))
        return
    typer.echo(f"account scope: {scope}")
    typer.echo(
        "limits are local to each process: " + reason
        if reason
        else "limits are shared through the Prefect server at PREFECT_API_URL"
    )
    for row in rows:
        line = (
            f"  {row.model}: {'auto from ' if row.auto else ''}{row.rps:g} req/s ({row.rps_from}), "
            f"{row.max_in_flight} in flight ({row.max_in_flight_from})"
        )
        state = states.get(row.model)
        if state is not None:
            line += (
                f"; server: {state.in_bucket:.1f}/{state.bucket:g} requests in the bucket at "
                f"{state.rps:g} req/s (the in-flight cap is per worker process)"
            )
        elif reason is None:
            line += "; server: no limits yet (the first run creates them)"
        typer.echo(line)
