"""The typer ``app`` every command registers on, and the helpers the commands share.

Command modules import from here (``from qwbatch.cli.app import _fail, app``), never from the
package, so the package can import them without a cycle; ``qwbatch.cli`` imports them all.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import typer

from qwbatch.core.errors import QwBatchError
from qwbatch.core.settings import Settings, run_overrides, settings_with

if TYPE_CHECKING:
    from qwbatch.budget.policy import BudgetPolicy
    from qwbatch.run.summary import RunSummary

app = typer.Typer(
    name="qwbatch",
    help="Render Parquet manifests of prompts into images with Qwen-Image, at scale.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: The API key the bundled simulator is started with; never a real key.
SIMULATOR_KEY = "simulator-local-key"


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"qwbatch: {message}", err=True)
    raise typer.Exit(code)


def _quiet_prefect() -> None:
    """Offline-friendly Prefect defaults, unless the user set them."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL", "WARNING")
    # The ephemeral server's first start (database migrations) can pass Prefect's default
    # timeout on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def _run_flow(manifest: str, out: str, *, quiet: bool = False, **params: Any) -> int:
    from qwbatch.budget.policy import BudgetPolicy
    from qwbatch.core.costs import money

    budget = params.get("budget")
    policy = (
        BudgetPolicy(money(budget), params.get("budget_mode", "refuse"))
        if budget is not None
        else None
    )
    try:
        # Secrets in Prefect blocks need Prefect even to plan (S3 credentials).
        done = None
        if not os.environ.get("QWBATCH_SECRET_BLOCKS"):
            if not quiet:
                typer.echo(f"qwbatch: planning {manifest}…", err=True)
            done = _plan_here(manifest, out, params, policy)
        if done is not None:
            summary = done
        else:
            _quiet_prefect()
            from flows.render import render_manifest  # Prefect: only when there is work
            from qwbatch.limits import reporting
            from qwbatch.run.progress_display import watch_run
            from qwbatch.run.runner import resolve_run_id

            # Known before the flow starts (the progress display follows it): an unfinished
            # run of this manifest in OUT is resumed, unless --new-run.
            params["run_id"] = run_id = resolve_run_id(
                manifest,
                out,
                settings=Settings(
                    **({"default_model": params["model"]} if params.get("model") else {})
                ),
                run_id=params.get("run_id"),
                resume=params.get("resume"),
                auto_resume=params.get("auto_resume", True),
                strict=params.get("strict", False),
                budget=policy,
            )
            # Each model's rate, limit, in flight and 429s/min on stderr while the run goes.
            limit_lines = (
                (lambda line: None) if quiet else (lambda line: typer.echo(line, err=True))
            )
            with (
                watch_run(run_id, quiet=quiet, budget=params.get("budget")),
                reporting(limit_lines, Settings().limits_status_s),
            ):
                summary = render_manifest(manifest=manifest, out=out, **params)
    except QwBatchError as exc:
        _fail(str(exc))
        return 2
    if summary.left:
        # Stopped by a signal: one line of what is left, and the signal's exit code.
        from qwbatch.core.stop import STOP

        typer.echo(f"qwbatch: {summary.left_line()}", err=True)
        return STOP.exit_code() if STOP.is_set() else 1
    for line in summary.lines():
        typer.echo(line)
    return 1 if summary.failed else 0


def _plan_here(
    manifest: str, out: str, params: dict[str, Any], policy: BudgetPolicy | None
) -> RunSummary | None:
    """Plan the run in this process, before Prefect starts; when it leaves nothing to render
    (every row already in the catalog: a nightly rerun with no new rows), finish it here
    and return its summary, with no Prefect server started. Otherwise None: the plan is
    saved under its run id, which ``params`` now names, and the flow renders that plan."""
    from qwbatch.run import runner

    began = time.monotonic()
    settings = settings_with(
        run_overrides(
            model=params.get("model"),
            shard_size=params.get("shard_size"),
            rps=params.get("rps"),
            max_in_flight=params.get("max_in_flight"),
            text_rerolls=params.get("text_rerolls"),
            text_max_cer=params.get("text_max_cer"),
            text_workers=params.get("text_workers"),
        )
    )
    prepared = runner.prepare(
        manifest,
        out,
        settings=settings,
        run_id=params.get("run_id"),
        resume=params.get("resume"),
        auto_resume=params.get("auto_resume", True),
        strict=params.get("strict", False),
        budget=policy,
    )
    if prepared.plan.shard_keys:
        params["run_id"], params["resume"] = prepared.plan.run_id, None
        return None
    return runner.finish(prepared, [], out=out, settings=settings, began=began)
