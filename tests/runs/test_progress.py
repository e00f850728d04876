"""Progress: the tracker's arithmetic, the engine's records seam, and both displays."""

from __future__ import annotations

import io
import threading

import pytest
from render_helpers import render
from rich.console import Console
from support import engine_settings, make_request

from qwbatch.core.types import Alias, CatalogRecord, PlanItem
from qwbatch.plan import Plan
from qwbatch.runs.progress import ProgressTracker, format_duration, tracker_for, watching
from qwbatch.runs.progress_display import LogLines, render_snapshot, show_progress, watch_run


class Clock:
    """A clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def record(
    key: str,
    status: str,
    *,
    index: int | None = 0,
    n: int = 1,
    cost: float = 0.0,
    row_id: str = "r",
    error_code: str | None = None,
) -> CatalogRecord:
    return CatalogRecord(
        run_id="run",
        row_id=row_id,
        request_key=key,
        mode="generate",
        model="m",
        prompt="p",
        size=None,
        seed=1,
        status=status,
        image_index=index,
        n=n,
        cost=cost,
        error_code=error_code,
    )


def planned(images: int, requests: int, deduplicated: int = 0) -> Plan:
    return Plan(run_id="run", images=images, requests=requests, deduplicated=deduplicated)


def test_tracker_counts_images_failures_cost_rate_and_eta() -> None:
    clock = Clock()
    tracker = ProgressTracker(clock=clock)
    assert not tracker.snapshot().planned
    assert tracker.snapshot().line() == "progress: planning…"

    tracker.on_plan(
        planned(images=10, requests=5, deduplicated=3), estimated_cost=1.0, currency="CNY"
    )
    clock.now += 4.0
    # n=3 request: two images stored, the third failed (a PartialFailure record).
    tracker.on_records(
        [
            record("a", "succeeded", index=0, n=3, cost=0.1),
            record("a", "succeeded", index=1, n=3, cost=0.1),
            record("a", "failed", index=None, n=3, error_code="PartialFailure", row_id="row-a"),
        ]
    )
    # A request whose folded duplicate repeats its records at no cost.
    tracker.on_records(
        [
            record("b", "succeeded", cost=0.1, row_id="b1"),
            record("b", "deduplicated", cost=0.0, row_id="b2"),
        ]
    )
    # A moderated request, and its folded duplicate repeating the failure.
    tracker.on_records(
        [
            record("c", "moderated", index=None, error_code="DataInspectionFailed", row_id="c1"),
            record("c", "moderated", index=None, error_code="DataInspectionFailed", row_id="c2"),
        ]
    )
    snap = tracker.snapshot()
    assert (snap.done_images, snap.total_images) == (5, 10)
    assert (snap.done_requests, snap.total_requests) == (3, 5)
    assert snap.succeeded_images == 3
    assert snap.failed_images == 2
    assert snap.cost == pytest.approx(0.3)
    assert snap.rate == pytest.approx(5 / 4.0)
    assert snap.eta_s == pytest.approx(5 / (5 / 4.0))
    assert snap.last_failure == "c1: DataInspectionFailed"
    assert snap.line() == (
        "progress: 3/10 images made, 50% done, 1.25 img/s, spent 0.3000 of est. 1.0000 CNY, "
        "ETA 4 s, 2 failed, 3 rows already rendered"
    )


def test_budget_is_shown_when_given_and_eta_unknown_before_any_image() -> None:
    tracker = ProgressTracker(budget=5.0, clock=Clock())
    tracker.on_plan(planned(images=4, requests=4), estimated_cost=2.0, currency="USD")
    snap = tracker.snapshot()
    assert snap.eta_s is None
    assert "spent 0.0000 of budget 5.0000 USD" in snap.line()
    assert "ETA ?" in snap.line()


def test_tracker_is_safe_across_threads() -> None:
    tracker = ProgressTracker()
    tracker.on_plan(planned(images=800, requests=800), currency="USD")

    def feed(start: int) -> None:
        for i in range(start, start + 200):
            tracker.on_records([record(f"k{i}", "succeeded", cost=0.01)])

    threads = [threading.Thread(target=feed, args=(i * 200,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snap = tracker.snapshot()
    assert snap.done_images == snap.succeeded_images == 800
    assert snap.cost == pytest.approx(8.0)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "?"), (0.4, "0 s"), (59, "59 s"), (65, "1 min 05 s"), (7260, "2 h 01 min")],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_registry_hands_the_tracker_to_the_run_and_forgets_it() -> None:
    tracker = ProgressTracker()
    with watching("run-x", tracker):
        assert tracker_for("run-x") is tracker
    assert tracker_for("run-x") is None


def test_engine_reports_each_request_as_it_finishes(sim, tmp_path) -> None:
    settings = engine_settings(sim)
    calls: list[list[CatalogRecord]] = []
    first = make_request("one", "a red kite", n=2)
    second = make_request("two", "a blue kite")
    items = [PlanItem(first, aliases=[Alias("one-again", 1)]), PlanItem(second)]
    records = render(
        items, settings, tmp_path, on_records=lambda rs: calls.append(list(rs)), write_part=False
    )
    assert len(calls) == 2
    by_row = {tuple(sorted({r.row_id for r in call})) for call in calls}
    assert by_row == {("one", "one-again"), ("two",)}
    assert sorted(r.row_id for call in calls for r in call) == sorted(r.row_id for r in records)

    tracker = ProgressTracker()
    tracker.on_plan(planned(images=3, requests=2), currency="USD")
    for call in calls:
        tracker.on_records(call)
    snap = tracker.snapshot()
    assert (snap.done_images, snap.succeeded_images, snap.failed_images) == (3, 3, 0)
    assert snap.cost == pytest.approx(sum(r.cost for r in records))


def test_log_lines_write_a_line_per_tick_and_a_last_one() -> None:
    tracker = ProgressTracker(clock=Clock())
    tracker.on_plan(planned(images=2, requests=2), currency="USD")
    stream = io.StringIO()
    lines = LogLines(tracker, stream=stream, interval_s=3600)
    lines.tick()
    tracker.on_records([record("a", "succeeded")])
    with lines:
        pass  # no interval passes: only the closing line
    assert stream.getvalue().splitlines() == [
        "progress: 0/2 images made, 0% done, 0.00 img/s, spent 0.0000 USD, ETA ?, 0 failed",
        "progress: 1/2 images made, 50% done, 0.00 img/s, spent 0.0000 USD, ETA ?, 0 failed",
    ]


def test_not_a_terminal_gives_plain_lines_and_quiet_gives_nothing() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False)
    with watch_run("run-plain", console=console, interval_s=3600) as tracker:
        assert tracker_for("run-plain") is tracker
        tracker.on_plan(planned(images=1, requests=1), currency="USD")
        tracker.on_records([record("a", "succeeded", cost=0.035)])
    (line,) = out.getvalue().splitlines()  # the interval never passed: the closing line only
    assert line.startswith("progress: 1/1 images made, 100% done, ")
    assert line.endswith(" img/s, spent 0.0350 USD, ETA 0 s, 0 failed")
    assert "\x1b[" not in line

    quiet = io.StringIO()
    with show_progress(tracker, quiet=True, console=Console(file=quiet, force_terminal=False)):
        pass
    assert quiet.getvalue() == ""


def test_terminal_gets_the_live_display() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with watch_run("run-live", console=console, budget=1.0) as tracker:
        tracker.on_plan(planned(images=4, requests=4), currency="USD")
        tracker.on_records([record("a", "succeeded", cost=0.5)])
        tracker.on_records(
            [record("b", "failed", index=None, error_code="InvalidParameter", row_id="bad-row")]
        )
    text = out.getvalue()
    assert "\x1b[" in text  # drawn with terminal control codes
    assert "1/4 images made (50% done)" in text  # a failure is no image
    assert "spent 0.5000 of budget 1.0000 USD" in text
    assert "1 failed" in text
    assert "last failure: bad-row: InvalidParameter" in text


def test_render_snapshot_before_the_plan() -> None:
    console = Console(file=io.StringIO(), width=100, record=True)
    console.print(render_snapshot(ProgressTracker().snapshot()))
    assert "planning" in console.export_text()
