"""``run``, ``estimate`` and ``validate``: the library calls behind the commands of that name.

The CLI parses its options and calls these with the same names (snake_case) and defaults,
then prints what they return; a notebook calls them directly. Each takes a manifest as a
path or URI, or as a table (:mod:`qwbatch.api.manifests`), and settings from the
environment with the call's options on top (as the CLI does), and raises
:class:`~qwbatch.core.errors.QwBatchError` subclasses rather than exiting.

Called from a thread with a running event loop (a Jupyter cell), the work runs in a thread
of its own (:mod:`qwbatch.api.threads`), since the runner starts event loops of its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from qwbatch.api.manifests import ManifestLike, manifest_uri
from qwbatch.api.threads import off_the_loop
from qwbatch.budget.policy import BudgetMode
from qwbatch.core.settings import Settings, settings_with
from qwbatch.runs.options import RunOptions

if TYPE_CHECKING:
    from qwbatch.manifest import Reject
    from qwbatch.plan import Plan
    from qwbatch.runs.summary import RunSummary


def run(
    manifest: ManifestLike,
    out: str | os.PathLike[str],
    *,
    model: str | None = None,
    strict: bool = False,
    shard_size: int | None = None,
    rps: float | Literal["auto"] | None = None,
    max_in_flight: int | None = None,
    text_rerolls: int | None = None,
    text_max_cer: float | None = None,
    text_workers: int | None = None,
    run_id: str | None = None,
    resume: str | None = None,
    new_run: bool = False,
    quiet: bool = False,
    budget: float | None = None,
    budget_mode: BudgetMode = "refuse",
    wait: bool = False,
    target_size: str | None = None,
    rerender_rejected: bool = False,
) -> RunSummary:
    """Render every new row of ``manifest`` into ``out`` and record it in ``out/catalog/``.

    ``out`` is a folder or ``s3://bucket/prefix``. An unfinished run of the same manifest in
    ``out`` is resumed unless ``new_run``; rows already in the catalog are not rendered
    again. ``model`` is the default for rows without one; ``strict`` refuses the whole
    manifest on any bad row (else bad rows are rejected, each with its reason, and the rest
    run). ``shard_size`` is requests per shard, ``rps`` requests per second (or "auto":
    find the account's limit from the model table's figure) and ``max_in_flight`` requests
    in flight, per model. Rows with ``expected_text`` have each
    image read back (OCR, ``text_workers`` processes) and re-rendered up to ``text_rerolls``
    times while an expected string reads with a character error rate over ``text_max_cer``
    (docs/text-checks.md). ``budget`` (the region's currency) is
    the most the run may spend: over it, ``budget_mode`` "refuse" refuses the run before any
    call, "trim" renders in priority and row order up to it. ``quiet`` hides the progress
    display (a bar on a terminal or in a notebook, a plain line every 10 s elsewhere, on
    stderr). ``target_size`` (``"300*250"``, ``"728*90:pad"``) delivers rows without their
    own ``target_size`` at exactly that size. ``rerender_rejected`` renders again, with a
    new seed, each row whose image a review rejected (``qwbatch review``; see
    :mod:`qwbatch.runs.rerender`). ``qwbatch run --dry-run`` is :func:`estimate`.

    One run holds ``out`` at a time (a lease, see ``docs/operations.md``): another run
    holding it raises ``DestBusyError`` naming its host and pid, unless ``wait``, which
    waits for it. Ctrl-C or SIGTERM stop the run cleanly (``summary.left`` counts what is
    left for a resume); a second one ends the process at once.

    Returns the run's summary (``summary.lines()`` is what the CLI prints); a run stopped by
    a signal returns with ``summary.left`` > 0. Raises ``QwBatchError`` (a refused manifest,
    budget or store) with a message that says why.

    Example::

        summary = qwbatch.run(df, "out", budget=5)
        print(summary.statuses, summary.cost, summary.currency)
    """
    options = RunOptions.pick(locals(), auto_resume=not new_run)
    return off_the_loop(
        lambda: _run(
            manifest, os.fspath(out), options, quiet=quiet, rerender_rejected=rerender_rejected
        )
    )


def _run(
    manifest: ManifestLike,
    out: str,
    options: RunOptions,
    *,
    quiet: bool,
    rerender_rejected: bool,
) -> RunSummary:
    from qwbatch.core.stop import STOP
    from qwbatch.runs import runner
    from qwbatch.storage.lease import hold
    from qwbatch.storage.stores import open_store

    settings = options.settings()
    policy = options.policy()
    # One run holds OUT from before it plans to its summary (storage.lease); with secrets in
    # Prefect blocks the store opens only inside the flow, which takes the lease there.
    held = (
        contextlib.nullcontext()
        if os.environ.get("QWBATCH_SECRET_BLOCKS")
        else hold(
            open_store(out, settings),
            ttl_s=settings.lease_ttl_s,
            wait=options.wait,
            label=f"qwbatch run {manifest if isinstance(manifest, str) else 'a table'}",
            on_wait=lambda line: _say(f"qwbatch: {line}"),
            on_lost=lambda message: STOP.set("lost DEST's lease"),
        )
    )
    if rerender_rejected:
        manifest = _with_new_seeds(manifest, out, settings, quiet=quiet)
    with held, manifest_uri(manifest, out=out, settings=settings) as path:
        # Secrets in Prefect blocks need Prefect even to plan (S3 credentials).
        if not os.environ.get("QWBATCH_SECRET_BLOCKS"):
            if not quiet:
                _say(f"qwbatch: planning {path}…")
            began = time.monotonic()
            prepared = runner.prepare(
                path,
                out,
                settings=settings,
                run_id=options.run_id,
                resume=options.resume,
                auto_resume=options.auto_resume,
                strict=options.strict,
                budget=policy,
            )
            if not prepared.plan.shard_keys:
                # Every row already in the catalog (a nightly rerun with nothing new):
                # finished here, with no Prefect server started.
                return runner.finish(prepared, [], out=out, settings=settings, began=began)
            options = dataclasses.replace(options, run_id=prepared.plan.run_id, resume=None)
        return _render_with_prefect(path, out, options, settings=settings, quiet=quiet)


def _with_new_seeds(
    manifest: ManifestLike, out: str, settings: Settings, *, quiet: bool
) -> ManifestLike:
    """``manifest`` with a new seed for each row a review rejected (a table saved under
    OUT, as any table manifest), or as it is when there is none."""
    from qwbatch.runs import rerender
    from qwbatch.runs.runner import input_stage
    from qwbatch.storage.stores import open_store

    store = open_store(out, settings)
    with (
        manifest_uri(manifest, out=None, settings=settings) as path,
        input_stage(path, settings, store, stage=False) as check_only,
    ):
        seeds = rerender.rejected_seeds(path, store, settings, stage=check_only)
        if not quiet:
            _say(f"qwbatch: {len(seeds)} rejected row(s) to render again with a new seed")
        return rerender.reseeded(path, seeds) if seeds else manifest


def _render_with_prefect(
    manifest: str, out: str, options: RunOptions, *, settings: Settings, quiet: bool
) -> RunSummary:
    """The ``render-manifest`` flow on ``manifest``, its progress shown while it runs."""
    _quiet_prefect()
    from flows.render import render_manifest  # Prefect: only when there is work
    from qwbatch.api.prefect_server import own_server
    from qwbatch.core.stop import STOP
    from qwbatch.limits import reporting
    from qwbatch.runs.progress_display import watch_run
    from qwbatch.runs.runner import resolve_run_id

    # Known before the flow starts (the progress display follows it): an unfinished run of
    # this manifest in OUT is resumed, unless new_run.
    run_id = resolve_run_id(
        manifest,
        out,
        settings=settings,
        run_id=options.run_id,
        resume=options.resume,
        auto_resume=options.auto_resume,
        strict=options.strict,
        budget=options.policy(),
    )
    options = dataclasses.replace(options, run_id=run_id)
    STOP.resume_hint = f"finish with qwbatch run {manifest} --out {out} --resume {run_id}"
    # Each model's rate, limit, in flight and 429s/min on stderr while the run goes. From
    # here Ctrl-C (the terminal's, to the whole process group) or SIGTERM stops the run
    # cleanly, and a second one at once; Prefect's server is kept out of the terminal's
    # process group, so it lives until the run has recorded its end.
    with (
        STOP.handling(signal.SIGINT, signal.SIGTERM),
        own_server(),
        watch_run(run_id, quiet=quiet, budget=options.budget),
        reporting((lambda line: None) if quiet else _say, Settings().limits_status_s),
    ):
        summary: RunSummary = render_manifest(
            manifest=manifest, out=out, **options.flow_parameters()
        )
        return summary


def estimate(
    manifest: ManifestLike,
    out: str | os.PathLike[str] | None = None,
    *,
    model: str | None = None,
    strict: bool = False,
    shard_size: int | None = None,
    budget: float | None = None,
    budget_mode: BudgetMode = "refuse",
    target_size: str | None = None,
) -> Plan:
    """Plan ``manifest`` as a run into ``out`` would, and return the plan; nothing is sent
    or written (``qwbatch run --dry-run``).

    The plan counts rows read, rejected, already rendered in ``out``'s catalog
    (``deduplicated``) and folded, and the requests, images and shards to render;
    ``plan.estimate`` is the price by model and tag (``plan.estimate.total``, in
    ``plan.estimate.currency``). Without ``out`` nothing counts as rendered already. Edit
    inputs are fetched and checked, so their keys agree with a run's, but not staged. A
    ``budget`` refuses (``BudgetExceededError``) or trims as :func:`run` would.

    Example::

        plan = qwbatch.estimate("prompts.parquet", "s3://bucket/renders")
        print(plan.images, plan.estimate.total)
    """
    options = RunOptions.pick(locals())
    return off_the_loop(lambda: _estimate(manifest, out, options))


def _estimate(
    manifest: ManifestLike, out: str | os.PathLike[str] | None, options: RunOptions
) -> Plan:
    from qwbatch.runs import runner

    settings = options.settings()
    target = os.fspath(out) if out is not None else None
    # A table is not saved into OUT for an estimate: it writes nothing there.
    with manifest_uri(manifest, out=None, settings=settings) as path:
        return runner.estimate(
            path, target, settings=settings, strict=options.strict, budget=options.policy()
        )


@dataclass(frozen=True, slots=True)
class Validation:
    """What :func:`validate` found: rows that would run, and each rejected row's reason."""

    valid: int
    rejects: list[Reject] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every row is valid."""
        return not self.rejects


def validate(
    manifest: ManifestLike,
    *,
    model: str | None = None,
    out: str | os.PathLike[str] | None = None,
) -> Validation:
    """Check ``manifest`` without rendering: the valid rows, and a reason for each rejected
    one (``qwbatch validate``).

    ``model`` is the default for rows without one; ``out`` is the store whose catalog edit
    inputs may name. Edit inputs are fetched and checked as a run would (nothing is staged
    or sent). ``rejects`` holds ``row_number`` (0-based), ``row_id``, ``column`` and
    ``reason`` per row; ``qwbatch.manifest.reader.rejects_table`` turns them into a table.

    Example::

        found = qwbatch.validate(df)
        assert found.ok, found.rejects[:5]
    """
    return off_the_loop(lambda: _validate(manifest, model, out))


def _validate(
    manifest: ManifestLike, model: str | None, out: str | os.PathLike[str] | None
) -> Validation:
    from qwbatch.manifest import read_manifest
    from qwbatch.runs.runner import input_stage, model_table
    from qwbatch.storage.stores import open_store

    settings = settings_with({"default_model": model})
    table = model_table(settings)
    good, bad = 0, []
    store = open_store(os.fspath(out), settings) if out is not None else None
    with (
        manifest_uri(manifest, out=None, settings=settings) as path,
        input_stage(path, settings, store, stage=False) as check_only,
    ):
        reader = read_manifest(
            path,
            table=table,
            default_model=settings.default_model,
            resolve_input=check_only,
            settings=settings,
        )
        # Column-wise checks for the common rows, as the plan does: no object per row.
        for block in reader.blocks():
            good += block.fast.num_rows + len(block.requests)
            bad.extend(block.rejects)
    return Validation(valid=good, rejects=bad)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _quiet_prefect() -> None:
    """Offline-friendly Prefect defaults, unless the user set them."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL", "WARNING")
    # The ephemeral server's first start (database migrations) can pass Prefect's default
    # timeout on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
