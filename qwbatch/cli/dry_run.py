"""``qwbatch run MANIFEST --out DEST --dry-run``: the whole plan, printed, and nothing else.

The manifest is read, validated and keyed, deduplicated against DEST's catalog, folded,
cut into shards (counted, not written) and priced, as a run would (edit inputs are fetched
and checked so their keys agree, not staged); a ``--budget`` refuses or trims as it would.
No provider is called and nothing is written to DEST. A thin layer over
:func:`qwbatch.api.estimate`.
"""

from __future__ import annotations

from typing import Literal

from rich.console import Console
from rich.table import Table

from qwbatch.core.costs import format_money
from qwbatch.core.errors import QwBatchError
from qwbatch.core.settings import settings_with
from qwbatch.plan import Plan

#: Tag lines printed (largest cost first); the rest are counted.
TAGS_SHOWN = 10


def print_dry_run(
    manifest: str,
    out: str,
    *,
    model: str | None,
    strict: bool,
    shard_size: int | None,
    budget: float | None = None,
    budget_mode: Literal["refuse", "trim"] = "refuse",
) -> int:
    """Plan ``manifest`` as a run into ``out`` would and print the plan; the exit code."""
    from qwbatch.api import estimate

    settings = settings_with({"default_model": model, "shard_size": shard_size})
    try:
        plan = estimate(
            manifest,
            out,
            model=model,
            strict=strict,
            shard_size=shard_size,
            budget=budget,
            budget_mode=budget_mode,
        )
    except QwBatchError as exc:
        Console(stderr=True, highlight=False).print(f"qwbatch: {exc}")
        return 1
    for line in dry_run_lines(plan, settings.shard_size, text_rerolls=settings.text_rerolls):
        Console(highlight=False).print(line)
    return 0


def dry_run_lines(plan: Plan, shard_size: int, *, text_rerolls: int = 0) -> list[str | Table]:
    """What ``--dry-run`` prints: the counts, what text re-rolls may add (``text_rerolls`` a
    text-checked image at most), then cost by model and the largest tags."""
    assert plan.estimate is not None  # plan_run always prices its plan
    estimate = plan.estimate
    currency = estimate.currency
    skipped = f", {plan.skipped_budget} skipped by the budget" if plan.budget else ""
    lines: list[str | Table] = [
        "dry run: no provider call, nothing written",
        f"rows read {plan.rows_read}, rejected {plan.rejected}, deduplicated "
        f"{plan.deduplicated} (already in the catalog), folded {plan.folded} (repeat an "
        f"earlier row){skipped}",
        f"to render: {plan.requests} requests, {plan.images} images in {plan.shards} shards "
        f"(up to {shard_size} requests each); estimated cost "
        f"{format_money(estimate.total, currency)} (region {estimate.region})",
    ]
    if estimate.text_images:
        at_most = format_money(estimate.rerolls_at_most(text_rerolls), currency)
        lines.append(
            f"text checks on {estimate.text_images} images: re-rolls may add at most "
            f"{at_most} ({text_rerolls} per image)"
        )
    models = Table("model", "requests", "images", "cost", title="by model")
    for name, line in sorted(estimate.by_model.items()):
        models.add_row(
            name, str(line.requests), str(line.images), format_money(line.cost, currency)
        )
    lines.append(models)
    if estimate.by_tag:
        ranked = sorted(estimate.by_tag.items(), key=lambda item: (-item[1].cost, item[0]))
        more = len(ranked) - TAGS_SHOWN
        title = "by tag" + (f" (largest {TAGS_SHOWN}; {more} more)" if more > 0 else "")
        tags = Table("tag", "requests", "images", "cost", title=title)
        for name, line in ranked[:TAGS_SHOWN]:
            tags.add_row(
                name, str(line.requests), str(line.images), format_money(line.cost, currency)
            )
        lines.append(tags)
    return lines
