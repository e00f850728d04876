"""Planning a run: what to render, what already exists, and how to cut it into shards.

``plan_run`` streams the manifest batch by batch: it drops requests whose outputs the catalog
already holds (recording them as ``deduplicated``), folds rows that ask for the same request
onto one key (they are rendered once and all recorded), prices what is left (``plan.estimate``)
and refuses or trims it to a budget (``qwbatch.budget.policy``, rows left out are recorded as
``skipped_budget``), then writes the rejects beside the catalog and the remaining work as
shard files under ``runs/<run_id>/shards/``. A shard file is the unit a Prefect task takes:
it holds requests, not results, so any worker can pick it up. ``dry_run`` does all of it but
the writing: ``qwbatch estimate`` is a plan that writes nothing and calls no provider.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qwbatch import budget as budgets
from qwbatch.catalog import table as catalog
from qwbatch.catalog.table import ExistingImage
from qwbatch.core.costs import Estimate, PriceTable, estimate
from qwbatch.core.model_table import ModelTable
from qwbatch.core.settings import Settings
from qwbatch.core.types import Alias, CatalogRecord, PlanItem, RenderRequest
from qwbatch.manifest.reader import InputResolver, Reject, read_manifest, rejects_table
from qwbatch.plan import shard_codec
from qwbatch.storage.layout import shard_key
from qwbatch.storage.stores import ObjectStore


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a random suffix."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


@dataclass(slots=True)
class Plan:
    """What a run will do; everything here is known before any provider call."""

    run_id: str
    rows_read: int = 0
    rejected: int = 0
    deduplicated: int = 0
    folded: int = 0
    requests: int = 0
    images: int = 0
    shard_keys: list[str] = field(default_factory=list)
    rejects_uri: str | None = None
    dedup_part_uri: str | None = None
    #: Every catalog part of deduplicated rows written (two when planned in two processes).
    dedup_part_uris: list[str] = field(default_factory=list)
    images_by_model: dict[str, int] = field(default_factory=dict)
    #: What the requests to render cost if every image is made (after any budget trim).
    estimate: Estimate | None = None
    #: The run's budget (with what this run id had spent before), and rows a trim skipped.
    budget: budgets.BudgetPolicy | None = None
    skipped_budget: int = 0
    #: Shard files the plan cut (``len(shard_keys)``, and counted in a dry run too).
    shards: int = 0


def dedup_records(
    request: RenderRequest,
    images: Sequence[ExistingImage],
    *,
    run_id: str,
    row_id: str,
    tags: tuple[tuple[str, str], ...],
    currency: str,
) -> list[CatalogRecord]:
    """Catalog rows for a request whose outputs already exist: no call, no cost."""
    now = time.time()
    return [
        CatalogRecord.for_request(
            request,
            run_id=run_id,
            row_id=row_id,
            status="deduplicated",
            tags=tags,
            image_index=image.image_index,
            output_uri=image.output_uri,
            sha256=image.sha256,
            bytes=image.bytes,
            width=image.width,
            height=image.height,
            unit_price=0.0,
            currency=currency,
            cost=0.0,
            started_at=now,
            finished_at=now,
        )
        for image in images
    ]


def plan_run(
    manifest: str | Path,
    store: ObjectStore | None,
    *,
    settings: Settings,
    table: ModelTable,
    run_id: str,
    strict: bool = False,
    shard_size: int | None = None,
    budget: budgets.BudgetPolicy | None = None,
    dry_run: bool = False,
    resolve_input: InputResolver | None = None,
) -> Plan:
    """Read, validate, dedup, price and shard ``manifest``; write rejects, dedup rows, shards.

    ``store`` None (only with ``dry_run``) plans against an empty catalog. ``budget`` raises
    ``BudgetExceededError`` (mode refuse) before anything is written, or trims (mode trim).
    ``resolve_input`` resolves edit inputs (``qwbatch.inputs.staging.InputStage`` in a run); the
    default only hashes local files (see ``read_manifest``).
    """
    if store is None and not dry_run:
        raise ValueError("plan_run writes to a store unless dry_run")
    if budget is None:
        # Streams in bounded memory; imported here, as it builds on this module's types.
        from qwbatch.plan.stream import stream_plan

        return stream_plan(
            manifest,
            store,
            settings=settings,
            table=table,
            run_id=run_id,
            strict=strict,
            shard_size=shard_size,
            dry_run=dry_run,
            resolve_input=resolve_input,
        )
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
                items[key].aliases.append(
                    Alias(
                        request.row_id,
                        request.row_number,
                        request.tags,
                        request.input_images,
                        request.input_notes,
                    )
                )
                items[key].request = budgets.rank(items[key].request, request)
            else:
                items[key] = PlanItem(request)

    prices = PriceTable.load(settings, table)
    ordered = list(items.values())
    if budget is not None:
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


# Shard files: zstd'd JSON lines (qwbatch.plan.shard_codec), one PlanItem a line. Internal to a run;
# never edited by hand.


def _encode_item(item: PlanItem) -> dict[str, Any]:
    return {"request": asdict(item.request), "aliases": [asdict(a) for a in item.aliases]}


def _decode_item(data: dict[str, Any]) -> PlanItem:
    req = dict(data["request"])
    for name in ("input_images", "input_sha256", "input_notes"):
        req[name] = tuple(req.get(name, ()))
    req["tags"] = tuple(tuple(pair) for pair in req["tags"])
    aliases = [
        Alias(
            a["row_id"],
            a["row_number"],
            tuple(tuple(p) for p in a["tags"]),
            tuple(a.get("input_images", ())),
            tuple(a.get("input_notes", ())),
        )
        for a in data["aliases"]
    ]
    return PlanItem(RenderRequest(**req), aliases)


def encode_line(item: PlanItem) -> str:
    """One shard file line (JSON, no newline) for ``item``."""
    return json.dumps(_encode_item(item), ensure_ascii=False)


def write_shard(store: ObjectStore, run_id: str, index: int, items: Sequence[PlanItem]) -> str:
    lines = "".join(encode_line(i) + "\n" for i in items)
    key = shard_key(run_id, index)
    data = shard_codec.compress(lines.encode("utf-8"))
    store.put(key, data, content_type=shard_codec.CONTENT_TYPE)
    return key


def read_shard(store: ObjectStore, key: str) -> Iterator[PlanItem]:
    return decode_shard(store.get(key))


def decode_shard(data: bytes) -> Iterator[PlanItem]:
    """The items of a shard file's bytes (zstd, or gzip as written before)."""
    for line in shard_codec.decompress(data).decode("utf-8").splitlines():
        if line:
            yield _decode_item(json.loads(line))
