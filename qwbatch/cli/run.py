"""``run``, ``validate``, ``simulator`` and ``demo``: rendering a manifest, checking one, and
the bundled simulator."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

import typer

from qwbatch.cli.app import SIMULATOR_KEY, _fail, _run_flow, app
from qwbatch.cli.compare import compare
from qwbatch.core.errors import QwBatchError


def _rps(text: str | None) -> float | Literal["auto"] | None:
    """``--rps``: a positive figure or "auto"."""
    if text is None:
        return None
    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise typer.BadParameter(f"{text!r} is neither a positive number nor 'auto'")
    return value


@app.command()
def run(
    manifest: Annotated[str, typer.Argument(help="Parquet manifest (path or s3://…)")],
    out: Annotated[str, typer.Option("--out", "-o", help="Output folder or s3://bucket/prefix")],
    model: Annotated[str | None, typer.Option(help="Default model for rows without one")] = None,
    models: Annotated[
        str | None,
        typer.Option(help="Render every row on each of these models: a,b,c (ids ID@MODEL)"),
    ] = None,
    strict: Annotated[bool, typer.Option(help="Refuse the whole manifest on any bad row")] = False,
    shard_size: Annotated[int | None, typer.Option(help="Requests per shard")] = None,
    rps: Annotated[
        str | None,
        typer.Option(
            help="Requests per second, every model; 'auto': find the account's limit, "
            "starting from the model table's figure"
        ),
    ] = None,
    max_in_flight: Annotated[int | None, typer.Option(help="Requests in flight per model")] = None,
    text_rerolls: Annotated[
        int | None,
        typer.Option(help="Re-renders of an image whose expected_text reads wrong [2]", min=0),
    ] = None,
    text_max_cer: Annotated[
        float | None,
        typer.Option(help="Character error rate an expected text may read with [0: exact]"),
    ] = None,
    text_workers: Annotated[
        int | None, typer.Option(help="OCR worker processes [one per core, at most 2]", min=1)
    ] = None,
    run_id: Annotated[
        str | None, typer.Option(help="Run id: resumed if OUT has it, else started")
    ] = None,
    resume: Annotated[
        str | None, typer.Option(help="Resume this run of MANIFEST in OUT (journal replayed)")
    ] = None,
    new_run: Annotated[
        bool, typer.Option(help="Start a new run even if one of MANIFEST is unfinished")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display")] = False,
    wait: Annotated[
        bool, typer.Option(help="If another run holds OUT, wait for it instead of exiting")
    ] = False,
    budget: Annotated[
        float | None,
        typer.Option(help="Most the run may spend, in the region's currency", min=0),
    ] = None,
    budget_mode: Annotated[
        Literal["refuse", "trim"],
        typer.Option(help="Over budget: refuse the run, or trim it (priority, then row order)"),
    ] = "refuse",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Plan and print the plan; no calls, no writes")
    ] = False,
) -> None:
    """Render every new row of MANIFEST into OUT and record it in OUT/catalog/.

    An unfinished run of the same MANIFEST in OUT (crashed or stopped) is resumed.
    """
    if models:
        from qwbatch.manifest.columns import models_from_text

        # Settings are read from the environment by every step of the run (QWBATCH_MODELS).
        os.environ["QWBATCH_MODELS"] = json.dumps(list(models_from_text(models) or ()))
    if dry_run:
        from qwbatch.cli.dry_run import print_dry_run

        raise typer.Exit(
            print_dry_run(
                manifest,
                out,
                model=model,
                strict=strict,
                shard_size=shard_size,
                budget=budget,
                budget_mode=budget_mode,
            )
        )
    code = _run_flow(
        manifest,
        out,
        quiet=quiet,
        wait=wait,
        model=model,
        strict=strict,
        shard_size=shard_size,
        rps=_rps(rps),
        max_in_flight=max_in_flight,
        text_rerolls=text_rerolls,
        text_max_cer=text_max_cer,
        text_workers=text_workers,
        run_id=run_id,
        budget=budget,
        budget_mode=budget_mode,
        resume=resume,
        new_run=new_run,
    )
    raise typer.Exit(code)


@app.command()
def validate(
    manifest: Annotated[str, typer.Argument(help="Parquet manifest (path or s3://…)")],
    model: Annotated[str | None, typer.Option(help="Default model for rows without one")] = None,
    rejects: Annotated[
        Path | None, typer.Option(help="Write rejected rows to this Parquet file")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON")] = False,
    out: Annotated[
        str | None, typer.Option("--out", help="Output store whose catalog: inputs may name")
    ] = None,
) -> None:
    """Check MANIFEST without rendering: counts, and a reason for every rejected row.

    Edit inputs are fetched and checked as a run would (nothing is staged or sent).
    """
    import pyarrow.parquet as pq

    from qwbatch.api import validate as validate_manifest
    from qwbatch.manifest import rejects_table

    try:
        found = validate_manifest(manifest, model=model, out=out)
    except QwBatchError as exc:
        _fail(str(exc))
        return
    good, bad = found.valid, found.rejects
    if rejects is not None and bad:
        pq.write_table(rejects_table(bad), rejects)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "valid": good,
                    "rejected": len(bad),
                    "rejects": [
                        {
                            "row_number": r.row_number,
                            "id": r.row_id,
                            "column": r.column,
                            "reason": r.reason,
                        }
                        for r in bad
                    ],
                },
                ensure_ascii=False,
                indent=2,
            )
        )
    else:
        typer.echo(f"{good} valid rows, {len(bad)} rejected")
        for r in bad[:50]:
            typer.echo(f"  row {r.row_number} id={r.row_id!r} [{r.column}]: {r.reason}")
        if len(bad) > 50:
            typer.echo(f"  … and {len(bad) - 50} more")
    raise typer.Exit(1 if bad else 0)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,  # --help goes to the simulator's own parser, which lists every flag
)
def simulator(ctx: typer.Context) -> None:
    """Run the DashScope-compatible simulator (for demos, tests and benchmarks).

    The flags are those of python -m qwbatch.simulator: --host (127.0.0.1), --port (8765),
    --api-key KEY (the only key accepted), --seed N (fault dice), --fast (cached images),
    --latency SECONDS, --rps N (every model), --no-rate-limit, and --set NAME=VALUE for any
    other SimulatorConfig knob (faults: --set error_5xx_rate=0.1, drop_connection_rate, ...).
    """
    from qwbatch.simulator.__main__ import main

    raise typer.Exit(main(ctx.args, prog="qwbatch simulator"))


#: The demo manifest rendered on three providers, and its compare sheet's columns.
PROVIDERS_DEMO = "providers-demo.parquet"
COMPARE_COLUMNS = "qwen-image-2.0,flux-2-pro,gpt-image-2"

#: Share of the demo simulator's images with quoted text that are misspelt on purpose.
DEMO_MISSPELL_RATE = 0.35
#: The demo simulator's dice: with it, one demo image is re-rolled and every text reads right.
DEMO_SIMULATOR_SEED = 3


@app.command()
def demo(
    out: Annotated[str, typer.Option("--out", "-o", help="Where to render")] = "out",
    manifest: Annotated[
        list[str] | None,
        typer.Option(help="Manifest to render (repeat for several, rendered in order)"),
    ] = None,
    real: Annotated[bool, typer.Option(help="Call the real DashScope API (needs the key)")] = False,
) -> None:
    """Render the demo manifests into ./out against the bundled simulators.

    The generation demo first, then the edit demo (which edits files, and one of the
    generation demo's outputs), then a few rows on Qwen-Image, FLUX and GPT Image side by
    side, drawn as the compare sheet in OUT/compare/.
    """
    manifests = manifest or [
        "manifests/demo.parquet",
        "manifests/edit-demo.parquet",
        "manifests/providers-demo.parquet",
    ]
    if real:
        if not os.environ.get("DASHSCOPE_API_KEY"):
            _fail("--real needs DASHSCOPE_API_KEY in the environment")
        code = max(_run_flow(m, out) for m in manifests)
        raise typer.Exit(code)
    from contextlib import ExitStack

    from qwbatch.simulator import SimulatorConfig, running
    from qwbatch.simulator.bfl_app import BflConfig, create_bfl_app
    from qwbatch.simulator.openai_app import create_openai_app

    with ExitStack() as stack:
        # A third of the images with quoted text come back misspelt, so the demo's text
        # checks have re-rolls to make (seeded: the same ones every time).
        demo_sim = SimulatorConfig(
            api_key=SIMULATOR_KEY, misspell_rate=DEMO_MISSPELL_RATE, seed=DEMO_SIMULATOR_SEED
        )
        sim = stack.enter_context(running(demo_sim))
        bfl = stack.enter_context(running(app=create_bfl_app(BflConfig(api_key=SIMULATOR_KEY))))
        gpt = stack.enter_context(running(app=create_openai_app(api_key=SIMULATOR_KEY)))
        os.environ["QWBATCH_DASHSCOPE_BASE_URL"] = sim.base_url
        os.environ["DASHSCOPE_API_KEY"] = SIMULATOR_KEY
        os.environ["QWBATCH_BFL_BASE_URL"] = bfl.root_url
        os.environ["BFL_API_KEY"] = SIMULATOR_KEY
        os.environ["QWBATCH_OPENAI_BASE_URL"] = f"{gpt.root_url}/v1"
        os.environ["OPENAI_API_KEY"] = SIMULATOR_KEY
        typer.echo(
            f"simulators: DashScope {sim.base_url}, BFL {bfl.root_url}, OpenAI {gpt.root_url}"
        )
        code = 0
        for path in manifests:
            typer.echo(f"--- {path}")
            # The side-by-side rows get a destination of their own: their compare sheet.
            dest = str(Path(out) / "providers") if path.endswith(PROVIDERS_DEMO) else out
            code = max(code, _run_flow(path, dest))
        ledgers = (sim.ledger(), bfl.ledger(), gpt.ledger())
    typer.echo(
        f"simulator ledgers: DashScope {ledgers[0]['billed_images']} images, "
        f"BFL {ledgers[1]['billed_usd']:.4f} USD, OpenAI {ledgers[2]['billed_usd']:.4f} USD"
    )
    if any(path.endswith(PROVIDERS_DEMO) for path in manifests):
        compare(str(Path(out) / "providers"), out=Path(out) / "compare", models=COMPARE_COLUMNS)
    typer.echo(f"images and catalog are in {Path(out).resolve()}")
    raise typer.Exit(code)
