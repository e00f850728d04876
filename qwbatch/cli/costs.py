"""``qwbatch estimate`` and ``qwbatch report``: the bill before a run, and after it.

Both are thin: ``estimate`` is :func:`qwbatch.runs.runner.estimate` (a plan that writes nothing),
``report`` is ``report.numbers.report`` (aggregates over the catalog); here they are only
printed, as rich tables or as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from qwbatch.cli.app import _fail, _not_a_file, app
from qwbatch.cli.dry_run import TAGS_SHOWN
from qwbatch.core.costs import as_float, format_money
from qwbatch.core.errors import QwBatchError
from qwbatch.core.settings import Settings
from qwbatch.plan import Plan
from qwbatch.report.numbers import Report


@app.command("estimate")
def estimate_command(
    manifest: Annotated[str, typer.Argument(help="Parquet manifest")],
    out: Annotated[
        str | None,
        typer.Option(
            "--out", "-o", help="Where a run would render: outputs its catalog holds are free"
        ),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Default model for rows without one")] = None,
    strict: Annotated[bool, typer.Option(help="Refuse the whole manifest on any bad row")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON")] = False,
) -> None:
    """What rendering MANIFEST into OUT would cost, by model and tag; nothing is sent."""
    from qwbatch.runs.runner import estimate

    settings = Settings(default_model=model) if model else Settings()
    try:
        plan = estimate(manifest, out, settings=settings, strict=strict)
    except QwBatchError as exc:
        _fail(str(exc))
        return
    if as_json:
        figures = estimate_figures(plan, text_rerolls=settings.text_rerolls)
        typer.echo(json.dumps(figures, ensure_ascii=False, indent=2))
    else:
        _print_estimate(plan, text_rerolls=settings.text_rerolls)


def estimate_figures(plan: Plan, *, text_rerolls: int = 0) -> dict[str, Any]:
    """The estimate's JSON: ``total``, ``currency``, ``images``, ``by_model``, ``by_tag`` …
    and ``rerolls_at_most``: what ``text_rerolls`` re-rolls of every text-checked image
    would add, at most."""
    assert plan.estimate is not None  # plan_run always prices its plan
    return {
        **plan.estimate.to_dict(),
        "text_rerolls": text_rerolls,
        "rerolls_at_most": as_float(plan.estimate.rerolls_at_most(text_rerolls)),
        "rows_read": plan.rows_read,
        "rejected": plan.rejected,
        "deduplicated": plan.deduplicated,
        "folded": plan.folded,
    }


def _print_estimate(plan: Plan, *, text_rerolls: int = 0) -> None:
    """The estimate for people: counts, cost by model, what text re-rolls may add, and the
    largest tag lines (all of them are in ``--json``; a manifest with an id as a tag has one
    per row)."""
    assert plan.estimate is not None  # plan_run always prices its plan
    estimate = plan.estimate
    console = Console(highlight=False)
    currency = estimate.currency
    console.print(
        f"{plan.rows_read} rows read, {plan.rejected} rejected, "
        f"{plan.deduplicated} already rendered, {plan.folded} duplicate rows folded"
    )
    console.print(
        f"to render: {estimate.requests} requests, {estimate.images} images; "
        f"estimated cost [bold]{format_money(estimate.total, currency)}[/bold] "
        f"(region {estimate.region}, billed per image generated)"
    )
    if estimate.text_images:
        console.print(
            f"text checks on {estimate.text_images} images: re-rolls may add at most "
            f"{format_money(estimate.rerolls_at_most(text_rerolls), currency)} "
            f"({text_rerolls} per image; each billed, within any --budget)"
        )
    models = Table("model", "requests", "images", "unit price", "cost", title="by model")
    for name, line in sorted(estimate.by_model.items()):
        price = estimate.unit_prices.get(name)
        models.add_row(
            name,
            str(line.requests),
            str(line.images),
            format_money(price, currency) if price is not None else "unknown",
            format_money(line.cost, currency),
        )
    console.print(models)
    more = len(estimate.by_tag) - TAGS_SHOWN
    title = "by tag (a request counts under each"
    title += f"; largest {TAGS_SHOWN}, {more} more in --json)" if more > 0 else ")"
    tags = Table("tag", "requests", "images", "cost", title=title)
    for name, line in estimate.largest_tags(TAGS_SHOWN):
        tags.add_row(name, str(line.requests), str(line.images), format_money(line.cost, currency))
    console.print(tags)
    for name, images in sorted(estimate.unpriced.items()):
        console.print(
            f"[yellow]no price known for {name} ({images} images): not in the total; "
            "set QWBATCH_PRICES or QWBATCH_PRICES_FILE[/yellow]"
        )


@app.command("report")
def report_command(
    dest: Annotated[str, typer.Argument(help="Output folder or s3://bucket/prefix of runs")],
    run: Annotated[
        str | None, typer.Option("--run", help="Only this run id ('latest' with --html)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON")] = False,
    html: Annotated[
        Path | None,
        typer.Option("--html", help="Write one self-contained HTML page (opens from disk)"),
    ] = None,
    filters: Annotated[
        list[str] | None,
        typer.Option("--filter", help="With --html: FIELD=PATTERN, repeatable (as contact-sheet)"),
    ] = None,
    max_images: Annotated[
        int, typer.Option(help="With --html: most images to inline", min=0)
    ] = 1000,
    links: Annotated[
        str,
        typer.Option(
            "--links",
            help="With --html: each image links to its full-size file: relative (local DEST), "
            "presigned (S3, time-limited), public (--link-base-url + key); auto picks "
            "relative for a local DEST, public with a base URL, else none",
        ),
    ] = "auto",
    link_base_url: Annotated[
        str | None,
        typer.Option(help="With --links public: the URL DEST is served under"),
    ] = None,
    link_expiry: Annotated[
        int, typer.Option(help="With --links presigned: seconds a link works", min=1)
    ] = 7 * 24 * 3600,
    review: Annotated[
        bool,
        typer.Option(help="With --html: approve/reject buttons and notes, exported as JSON"),
    ] = False,
) -> None:
    """Counts, images, spend by model/tag/run, retries, failures and speed, from DEST's catalog."""
    from qwbatch.report.numbers import report
    from qwbatch.storage.stores import open_store

    settings = Settings()
    _not_a_file(dest, "DEST")
    if html is not None:
        _write_html(
            dest,
            html,
            run=run,
            filters=filters or [],
            max_images=max_images,
            links={"mode": links, "base_url": link_base_url, "expires_s": link_expiry},
            review=review,
        )
        return
    try:
        result = report(open_store(dest, settings), run_id=run)
    except QwBatchError as exc:
        _fail(str(exc))
        return
    if as_json:
        typer.echo(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
    else:
        _print_report(result)


def _write_html(
    dest: str,
    html: Path,
    *,
    run: str | None,
    filters: list[str],
    max_images: int,
    links: dict[str, Any],
    review: bool = False,
) -> None:
    from qwbatch.catalog.view import parse_filters
    from qwbatch.report.html import render_html_report
    from qwbatch.report.links import link_maker
    from qwbatch.report.numbers import require_catalog
    from qwbatch.storage.stores import open_store

    try:
        store = open_store(dest, Settings())
        require_catalog(store)
        page = render_html_report(
            store,
            run,
            filters=parse_filters(filters),
            max_images=max_images,
            image_link=link_maker(store, page_dir=html.parent, **links),
            review=review,
        )
        html.write_text(page, encoding="utf-8")
    except QwBatchError as exc:
        _fail(str(exc))
        return
    except OSError as exc:
        _fail(f"cannot write {html}: {exc.strerror}")
        return
    typer.echo(f"report → {html} ({len(page.encode()) // 1024} KiB)")


def _money_by_currency(amounts: dict[str, float]) -> str:
    return ", ".join(format_money(v, c) for c, v in sorted(amounts.items())) or "0"


def _print_report(report: Report) -> None:
    console = Console(highlight=False)
    overview = Table("", "", title="overview", show_header=False)
    overview.add_row("runs", str(len(report.runs)))
    overview.add_row("catalog rows", str(report.rows))
    overview.add_row("requests", str(report.requests))
    overview.add_row("images stored", str(report.images))
    overview.add_row("spend", _money_by_currency(report.cost))
    if report.spend is not None:
        overview.add_row("run and lifetime spend", report.spend.line())
    overview.add_row("possible extra spend", _money_by_currency(report.possible_cost))
    overview.add_row("provider calls", f"{report.calls} ({report.retries} retries)")
    overview.add_row("wall time", f"{report.wall_s:.1f} s")
    overview.add_row("throughput", f"{report.images_per_minute:.1f} images/min")
    if report.text.checked:
        text = report.text
        overview.add_row(
            "text checks",
            f"{text.checked} images: {text.passed} read right, {text.mismatched} misspelt "
            f"after re-rolls, {text.unread} unreadable; {text.rerolls} re-rolls",
        )
    console.print(overview)

    statuses = Table("status", "rows", title="by status")
    for status, count in report.statuses.items():
        statuses.add_row(status, str(count))
    console.print(statuses)

    for title, lines in (("spend by model", report.by_model), ("spend by tag", report.by_tag)):
        table = Table("name", "images", "cost", "possible", title=title)
        for line in lines:
            table.add_row(
                line.name,
                str(line.images),
                format_money(line.cost, line.currency),
                format_money(line.possible_cost, line.currency),
            )
        console.print(table)

    runs = Table(
        "run", "images", "cost", "calls", "retries", "wall s", "images/min", title="by run"
    )
    for run in report.runs:
        runs.add_row(
            run.run_id,
            str(run.images),
            format_money(run.cost, run.currency),
            str(run.calls),
            str(run.retries),
            f"{run.wall_s:.1f}",
            f"{run.images_per_minute:.1f}",
        )
    console.print(runs)

    if report.failures:
        failures = Table("status", "error", "rows", title="failures by error class")
        for status, codes in report.failures.items():
            for code, count in codes.items():
                failures.add_row(status, code, str(count))
        console.print(failures)
    else:
        console.print("no failures")
