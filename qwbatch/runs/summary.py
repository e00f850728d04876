"""A run's summary: what the plan found and what the shards did, in one small object."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from qwbatch.core.costs import as_float, format_money
from qwbatch.plan import Plan
from qwbatch.render.engine import ShardResult


@dataclass(slots=True)
class RunSummary:
    run_id: str
    out: str
    rows_read: int = 0
    rejected: int = 0
    deduplicated: int = 0
    folded: int = 0
    requests: int = 0
    shards: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    images_stored: int = 0
    billed_images: int = 0
    cost: float = 0.0
    currency: str = "USD"
    possible_extra_images: int = 0
    possible_extra_cost: float = 0.0
    #: Calls whose answer was lost after sending (each may have been billed; see above).
    ambiguous_calls: int = 0
    #: Async tasks found again after their creation answer was lost: harvested, not re-paid.
    recovered_tasks: int = 0
    attempts: int = 0
    #: Requests not finished because the run was stopped; a resume does them.
    left: int = 0
    #: Whether this attempt continued an earlier one (journal replayed, finished shards kept).
    resumed: bool = False
    #: The signal that stopped the run ("SIGINT", "SIGTERM"), when it was stopped.
    stopped_by: str | None = None
    catalog_uri: str = ""
    rejects_uri: str | None = None
    contact_sheet_uri: str | None = None
    wall_s: float = 0.0
    #: The plan's price: every planned image billed (after any budget trim).
    estimated_cost: float = 0.0
    #: The run's budget (None: no budget), its mode, and rows it kept from rendering.
    budget: float | None = None
    budget_mode: str | None = None
    skipped_budget: int = 0
    #: What DEST's catalog says every run there has spent, this one included (see
    #: :mod:`qwbatch.catalog.spend`), over how many runs; None when it could not be read.
    lifetime_cost: float | None = None
    lifetime_runs: int = 0

    @classmethod
    def from_parts(
        cls,
        plan: Plan,
        shards: Iterable[ShardResult],
        *,
        out: str,
        catalog_uri: str,
        currency: str,
        wall_s: float,
    ) -> RunSummary:
        statuses: Counter[str] = Counter()
        summary = cls(
            run_id=plan.run_id,
            out=out,
            rows_read=plan.rows_read,
            rejected=plan.rejected,
            deduplicated=plan.deduplicated,
            folded=plan.folded,
            requests=plan.requests,
            shards=len(plan.shard_keys),
            currency=currency,
            catalog_uri=catalog_uri,
            rejects_uri=plan.rejects_uri,
            wall_s=wall_s,
            estimated_cost=as_float(plan.estimate.total) if plan.estimate else 0.0,
            budget=as_float(plan.budget.amount) if plan.budget else None,
            budget_mode=plan.budget.mode if plan.budget else None,
        )
        for shard in shards:
            statuses.update(shard.statuses)
            summary.images_stored += shard.images
            summary.billed_images += shard.billed_images
            summary.cost += shard.cost
            summary.possible_extra_images += shard.possible_extra_images
            summary.possible_extra_cost += shard.possible_extra_cost
            summary.ambiguous_calls += shard.ambiguous_calls
            summary.recovered_tasks += shard.recovered_tasks
            summary.attempts += shard.attempts
            summary.left += shard.left
        summary.statuses = dict(sorted(statuses.items()))
        summary.skipped_budget = plan.skipped_budget + statuses["skipped_budget"]
        summary.cost = round(summary.cost, 6)
        summary.possible_extra_cost = round(summary.possible_extra_cost, 6)
        return summary

    @property
    def failed(self) -> int:
        """Requests or images that ended without an output (any status but the good ones)."""
        good = {"succeeded", "deduplicated", "skipped_budget"}  # skipped: the user's ceiling
        return sum(v for k, v in self.statuses.items() if k not in good)

    def left_line(self) -> str:
        """One line: what a stopped run left, and how to finish it."""
        why = f"stopped by {self.stopped_by}" if self.stopped_by else "stopped"
        return (
            f"{why}: {self.left} of {self.requests} requests left (journaled); finish with "
            f"qwbatch run MANIFEST --out {self.out} --resume {self.run_id}"
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def lines(self) -> list[str]:
        """A short human summary, one fact a line."""
        statuses = ", ".join(f"{k} {v}" for k, v in self.statuses.items()) or "nothing rendered"
        out = [
            f"run {self.run_id}: {self.rows_read} rows read, {self.rejected} rejected, "
            f"{self.deduplicated} already rendered, {self.folded} duplicate rows folded",
            f"requests {self.requests} in {self.shards} shards: {statuses}",
            f"images stored {self.images_stored}; billed {self.billed_images} images, "
            f"cost {self.cost:.4f} {self.currency}",
        ]
        if self.lifetime_cost is not None:
            out.append(
                f"lifetime spend in {self.out}: {format_money(self.lifetime_cost, self.currency)} "
                f"over {self.lifetime_runs} runs"
            )
        if self.possible_extra_images:
            out.append(
                f"possible extra spend from {self.ambiguous_calls} ambiguous calls: "
                f"{self.possible_extra_images} images, {self.possible_extra_cost:.4f} "
                f"{self.currency}"
            )
        if self.recovered_tasks:
            out.append(f"{self.recovered_tasks} lost async submissions found and harvested")
        out.append(f"provider calls: {self.attempts}" + (" (resumed run)" if self.resumed else ""))
        if self.budget is not None:
            out.append(
                f"budget {format_money(self.budget, self.currency)} ({self.budget_mode}): "
                f"spent {format_money(self.cost + self.possible_extra_cost, self.currency)} "
                f"including possible spend; {self.skipped_budget} rows skipped by the budget"
            )
        if self.left:
            out.append(self.left_line())
        if self.billed_images == 0 and self.requests == 0:
            out.append("nothing new to render: no image was paid for")
        out.append(f"catalog: {self.catalog_uri}")
        if self.rejects_uri:
            out.append(f"rejects: {self.rejects_uri}")
        if self.contact_sheet_uri:
            out.append(f"contact sheet: {self.contact_sheet_uri}")
        out.append(f"wall time {self.wall_s:.1f} s")
        return out
