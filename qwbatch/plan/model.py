"""What a plan is: the :class:`Plan` every planning path fills, run ids, and the catalog rows
of requests whose outputs already exist (``dedup_records``)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from qwbatch import budget as budgets
from qwbatch.catalog.table import ExistingImage
from qwbatch.core.costs import Estimate
from qwbatch.core.types import CatalogRecord, RenderRequest


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
