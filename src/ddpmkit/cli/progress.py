"""Progress of long work for people: a rich bar in a terminal, plain lines when piped.

    with work_progress(console, "sampling 1,000 images", total=1000, unit="images") as bar:
        for batch in batches:
            bar.advance(len(batch))

In a terminal: description, bar, done/total, rate and ETA, redrawn in place. Piped to a file
(nohup, a cluster job): one line like `sampling 1,000 images: 250/1,000 images (25%), 12.5
images/s, ETA 1m00s` at most every `every_s` seconds and once at the end, never wrapped.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator, Optional

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text


def format_duration(seconds: float) -> str:
    """42s, 3m05s, 2h07m."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class PlainProgress:
    """Progress as plain lines on `console`, for output that is not a terminal."""

    def __init__(self, console: Console, what: str, total: float, unit: str, every_s: float = 10.0) -> None:
        self.console, self.what, self.total, self.unit, self.every_s = console, what, total, unit, every_s
        self.done = 0.0
        self.start = time.perf_counter()
        self._last_print = self.start

    def advance(self, amount: float = 1.0) -> None:
        self.done = min(self.total, self.done + amount)
        now = time.perf_counter()
        if now - self._last_print >= self.every_s and self.done < self.total:
            self._last_print = now
            self.console.print(self.line(now), markup=False, highlight=False, soft_wrap=True)

    def line(self, now: Optional[float] = None) -> str:
        elapsed = (now or time.perf_counter()) - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        text = f"{self.what}: {self.done:,.0f}/{self.total:,.0f} {self.unit} ({pct:.0f}%), {rate:,.1f} {self.unit}/s"
        if self.done < self.total and rate > 0:
            text += f", ETA {format_duration((self.total - self.done) / rate)}"
        else:
            text += f", {format_duration(elapsed)}"
        return text

    def close(self) -> None:
        self.console.print(self.line(), markup=False, highlight=False, soft_wrap=True)


class _Rate(ProgressColumn):
    """`12.5 images/s`, once rich has measured a speed."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.1f} {self.unit}/s" if task.speed else "")


class RichProgress:
    """Progress as a rich bar redrawn in place, for a terminal."""

    def __init__(self, console: Console, what: str, total: float, unit: str) -> None:
        self._bar = Progress(
            TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f} " + unit), _Rate(unit), TimeRemainingColumn(),
            console=console, transient=False,
        )
        self._task = self._bar.add_task(what, total=total)
        self._bar.start()

    def advance(self, amount: float = 1.0) -> None:
        self._bar.advance(self._task, amount)

    def close(self) -> None:
        self._bar.stop()


@contextmanager
def work_progress(console: Console, what: str, total: float, unit: str = "images",
                  every_s: float = 10.0) -> Iterator[PlainProgress | RichProgress]:
    """Progress of `total` units of work described by `what` (see the module docstring)."""
    bar: PlainProgress | RichProgress
    if console.is_terminal:
        bar = RichProgress(console, what, total, unit)
    else:
        bar = PlainProgress(console, what, total, unit, every_s)
    try:
        yield bar
    finally:
        bar.close()
