"""The in-memory plan: every request held at once, so that a budget can rank them all.

A budget refuses or trims the plan as a whole (``qwbatch.budget.policy``: highest priority
first, rows left out recorded as ``skipped_budget``), so this path reads the manifest into
one dict of requests before it prices and cuts them; plans without a budget stream
(``qwbatch.plan.stream``). Called by ``qwbatch.plan.planner.plan_run``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from qwbatch import budget as budgets
from qwbatch.catalog import table as catalog
from qwbatch.core.costs import PriceTable, estimate
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.core.types import CatalogRecord, PlanItem
from qwbatch.manifest import InputResolver, Reject, read_manifest, rejects_table
from qwbatch.plan.aliases import alias_of
from qwbatch.plan.model import Plan, dedup_records
from qwbatch.plan.shards import write_shard
from qwbatch.storage.stores import ObjectStore


def plan_in_memory(
    manifest: str | Path,
    store: ObjectStore | None,
    *,
    settings: Settings,
    table: ModelTable,
    run_id: str,
    budget: budgets.BudgetPolicy,
    strict: bool,
    shard_size: int | None,
    dry_run: bool,
    resolve_input: InputResolver | None,
) -> Plan:
    """Plan ``manifest`` within ``budget`` (see ``plan_run`` for the arguments)."""
    plan = Plan(run_id=run_id)
    existing = catalog.existing_outputs(store) if store is not None else {}
    items: dict[str, PlanItem] = {}
    dedup: list[CatalogRecord] = []
    rejects: list[Reject] = []
    currency = settings.currency()

    for batch in read_manifest(
        manifest,
        table=table,
        default_model=settings.default_model,
        strict=strict,
        resolve_input=resolve_input,
        settings=settings,
    ):
        plan.rows_read += len(batch.requests) + len(batch.rejects)
        rejects.extend(batch.rejects)
        for request in batch.requests:
            key = request.request_key
            if key in existing:
                plan.deduplicated += 1
                dedup.extend(
                    dedup_records(
                        request,
                        existing[key],
                        run_id=run_id,
                        row_id=request.row_id,
                        tags=request.tags,
                        currency=currency,
                    )
                )
            elif key in items:
                plan.folded += 1
                items[key].aliases.append(alias_of(request))
                items[key].request = budgets.rank(items[key].request, request)
            else:
                items[key] = PlanItem(request)

    prices = PriceTable.load(settings, table)
    ordered = list(items.values())
    if store is not None:
        budget = dataclasses.replace(budget, spent=budgets.spent_by_run(store, run_id))
    outcome = budgets.apply(ordered, prices, budget)
    ordered, plan.budget = outcome.kept, budget
    plan.skipped_budget = sum(1 + len(item.aliases) for item in outcome.skipped)
    dedup.extend(
        budgets.skipped_records(outcome.skipped, prices, run_id=run_id, budget=budget.amount)
    )
    plan.estimate = estimate((item.request for item in ordered), prices)
    plan.rejected = len(rejects)
    plan.requests = len(ordered)
    for item in ordered:
        plan.images += item.request.n
        model = item.request.model
        plan.images_by_model[model] = plan.images_by_model.get(model, 0) + item.request.n
    size = shard_size or settings.shard_size
    plan.shards = -(-len(ordered) // size)
    if store is None or dry_run:
        return plan

    plan.rejects_uri = catalog.write_rejects(store, rejects_table(rejects), run_id=run_id)
    plan.dedup_part_uri = catalog.write_part(
        store, dedup, run_id=run_id, label="plan", unique=False
    )
    plan.dedup_part_uris = [plan.dedup_part_uri] if plan.dedup_part_uri else []
    for index, start in enumerate(range(0, len(ordered), size)):
        plan.shard_keys.append(write_shard(store, run_id, index, ordered[start : start + size]))
    return plan
