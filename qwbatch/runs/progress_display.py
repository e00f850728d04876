"""Showing a ``ProgressTracker``: live on a terminal, log lines elsewhere.

On a terminal, or in a Jupyter notebook with ipywidgets, a rich live display redraws a few
times a second: a bar of images done out of the total, the rate, spend against the budget
(or the estimate), ETA, failures and the latest failure's reason. Anywhere else (CI, a
pipe, a log file, a notebook without ipywidgets), one plain line every ``interval_s``
seconds, and a last one when the run ends. Both write to stderr, so stdout keeps only the
run's summary.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from qwbatch.runs.progress import ProgressSnapshot, ProgressTracker, format_duration, watching

#: Seconds between plain progress lines when not on a terminal.
DEFAULT_LOG_INTERVAL_S = 10.0


def render_snapshot(snap: ProgressSnapshot) -> RenderableType:
    """The live display's picture of one snapshot (a bar and two lines of facts)."""
    if not snap.planned:
        return Text("planning… reading and validating the manifest", style="dim")
    bar = ProgressBar(total=max(1, snap.total_images), completed=snap.done_images, width=40)
    head = Table.grid(padding=(0, 1))
    head.add_row(
        Text("rendering", style="bold"),
        bar,
        Text(f"{snap.succeeded_images}/{snap.total_images} images made ({snap.fraction:.0%} done)"),
    )
    facts = Text()
    facts.append(f"{snap.rate:.2f} img/s", style="cyan")
    facts.append(f" · ETA {format_duration(snap.eta_s)}")
    over = snap.budget is not None and snap.cost > snap.budget
    facts.append(" · " + snap.spend_text(), style="red" if over else "green")
    facts.append(f" · {snap.failed_images} failed", style="red" if snap.failed_images else "")
    if snap.already_rendered:
        facts.append(f" · {snap.already_rendered} rows already rendered", style="dim")
    parts: list[RenderableType] = [head, facts]
    if snap.last_failure:
        parts.append(Text(f"last failure: {snap.last_failure}", style="red dim"))
    return Group(*parts)


class LogLines:
    """Writes :meth:`ProgressSnapshot.line` to ``stream`` every ``interval_s`` seconds."""

    def __init__(
        self,
        tracker: ProgressTracker,
        *,
        stream: IO[str],
        interval_s: float = DEFAULT_LOG_INTERVAL_S,
    ) -> None:
        self.tracker = tracker
        self.stream = stream
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="qwbatch-progress", daemon=True)

    def tick(self) -> None:
        """Write one line now."""
        self.stream.write(self.tracker.snapshot().line() + "\n")
        self.stream.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.tick()

    def __enter__(self) -> LogLines:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.tick()


def _has_widgets() -> bool:
    """Whether a notebook can show rich's live bar (it draws through ipywidgets)."""
    return importlib.util.find_spec("ipywidgets") is not None


@contextmanager
def show_progress(
    tracker: ProgressTracker,
    *,
    quiet: bool = False,
    console: Console | None = None,
    interval_s: float = DEFAULT_LOG_INTERVAL_S,
) -> Iterator[ProgressTracker]:
    """Show ``tracker`` while the block runs: live on a terminal, else periodic lines.

    ``quiet`` shows nothing. ``console`` defaults to one on stderr; whether it is a terminal
    or a notebook decides the style (rich's rules: a TTY, ``FORCE_COLOR``/``TTY_COMPATIBLE``,
    or a Jupyter kernel; a notebook without ipywidgets gets the plain lines).
    """
    if quiet:
        yield tracker
        return
    console = console or Console(stderr=True)
    if console.is_terminal or (console.is_jupyter and _has_widgets()):
        live = Live(
            get_renderable=lambda: render_snapshot(tracker.snapshot()),
            console=console,
            refresh_per_second=4,
            transient=False,
        )
        with live:
            yield tracker
        return
    stream = console.file if console.file is not None else sys.stderr
    with LogLines(tracker, stream=stream, interval_s=interval_s):
        yield tracker


@contextmanager
def watch_run(
    run_id: str,
    *,
    quiet: bool = False,
    budget: float | None = None,
    console: Console | None = None,
    interval_s: float = DEFAULT_LOG_INTERVAL_S,
) -> Iterator[ProgressTracker]:
    """Track run ``run_id`` in this process and show its progress while the block runs."""
    tracker = ProgressTracker(budget=budget)
    with (
        watching(run_id, tracker),
        show_progress(tracker, quiet=quiet, console=console, interval_s=interval_s),
    ):
        yield tracker
