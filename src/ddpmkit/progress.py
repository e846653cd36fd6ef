"""Progress of long work: a rich bar in a terminal, plain lines in a log file (piped, nohup, a job).

    p = Progress("sample", total=250 * 4, unit="steps", mode="auto", console=make_console())
    p.update(done, info="images 64/256")       # every step: moves the bar
    p.line(info="images 64/256")               # when piped: one plain line (throttled unless force)
    p.close()

    with Progress("Inception features", total=1000, unit="images", show_rate=True) as p:
        p.advance(len(batch))                  # moves the bar, or a throttled plain line when piped
    # leaving the block: piped, one last line with the final count

The rate and the time left are measured from the first update on, so the first step (which pays
for warm-up: allocation, cudnn autotune, torch.compile) does not skew them. Counts may be
fractional (a share of a batch's network calls); they are shown rounded.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any, Callable, Literal, Optional

from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as _RichProgress

from ddpmkit.human import fmt_duration

Mode = Literal["auto", "bar", "lines", "off"]
PIPED_WIDTH = 1000  # columns of a console that is not a terminal: a log file keeps whole lines


class LogConsole(Console):
    """A rich Console that wraps at the terminal's width in a terminal, and never when piped:
    `nohup ddpmkit train > log` keeps each path and each progress line on one line."""

    @property
    def size(self) -> ConsoleDimensions:
        dims = super().size
        if self._width is None and not self.is_terminal:
            return ConsoleDimensions(PIPED_WIDTH, dims.height)
        return dims

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]

    def print(self, *objects: Any, soft_wrap: Optional[bool] = None, **kwargs: Any) -> None:
        if soft_wrap is None and not self.is_terminal:
            soft_wrap = True
        super().print(*objects, soft_wrap=soft_wrap, **kwargs)


def make_console(stderr: bool = True) -> LogConsole:
    return LogConsole(stderr=stderr, highlight=False)


def resolve_mode(mode: Mode | bool, console: Console) -> Mode:
    """auto (or True): a bar in a terminal, plain lines otherwise; False: off."""
    if mode is True or mode == "auto":
        return "bar" if console.is_terminal else "lines"
    if mode is False:
        return "off"
    return mode


class Rate:
    """Units per second since the first update, and the time left for `total`.

    The first update's work is left out with its time (it may pay for warm-up), so the rate is
    known from the second update on.
    """

    def __init__(self, total: float, done: float = 0) -> None:
        self.total = total
        self._start: Optional[tuple[float, float]] = None  # (time, done) at the first update
        self.done = done

    def update(self, done: float) -> None:
        if self._start is None:
            self._start = (time.perf_counter(), done)
        self.done = done

    @property
    def per_second(self) -> Optional[float]:
        if self._start is None:
            return None
        t0, d0 = self._start
        elapsed = time.perf_counter() - t0
        return (self.done - d0) / elapsed if self.done > d0 and elapsed > 0 else None

    @property
    def seconds_left(self) -> Optional[float]:
        rate = self.per_second
        return (self.total - self.done) / rate if rate else None


class Progress:
    """One long job: `update` moves a rich bar (terminal), `line` prints a plain line (piped).

    mode: "bar", "lines", "off", or "auto" (bar in a terminal, else lines). Plain lines go to
    `print_line` (default: the console); `line` prints at most every `every_s` seconds unless
    forced, so a log file gets a steady trickle, not one line per step. show_rate: plain lines
    also give `12.5 images/s`. As a context manager it closes itself, and piped, ends with a
    line of the final count (unless the last line showed it).
    """

    def __init__(
        self,
        label: str,
        total: float,
        *,
        unit: str = "steps",
        done: float = 0,
        mode: Mode | bool = "auto",
        console: Optional[Console] = None,
        print_line: Optional[Callable[[str], None]] = None,
        every_s: float = 10.0,
        info: str = "",
        show_rate: bool = False,
    ) -> None:
        self.console = console or make_console()
        self.mode = resolve_mode(mode, self.console)
        self.label, self.unit, self.every_s = label, unit, every_s
        self.info, self.show_rate = info, show_rate
        self.rate = Rate(total, done)
        self._print = print_line or self._print_plain
        self._last_line = time.perf_counter()
        self._line_done: Optional[float] = None  # the count the last plain line showed
        self._bar: Optional[_RichProgress] = None
        if self.mode == "bar":
            self._bar = _RichProgress(
                TextColumn(f"[bold]{escape(label)}"), BarColumn(),
                TextColumn("{task.completed:,.0f}/{task.total:,.0f}"), TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                console=self.console, transient=False,
            )
            self._task = self._bar.add_task(label, total=total, completed=done, info=info)
            self._bar.start()

    def _print_plain(self, text: str) -> None:
        # soft_wrap: a plain line stays one line in a log file, whatever the console's width
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    @property
    def done(self) -> float:
        return self.rate.done

    def update(self, done: float, info: Optional[str] = None) -> None:
        """Move the bar to `done` units; `info` (kept until the next) is shown beside it."""
        self.rate.update(done)
        if info is not None:
            self.info = info
        if self._bar is not None:
            self._bar.update(self._task, completed=done, info=self.info)

    def set_total(self, total: float) -> None:
        """A new total (work found longer or shorter than planned); the rate is kept."""
        self.rate.total = total
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def advance(self, amount: float = 1) -> None:
        """`amount` more units done (at most `total`): the bar moves, or piped, a throttled line."""
        self.update(min(self.rate.total, self.done + amount))
        self.line()

    def line(self, info: Optional[str] = None, force: bool = False) -> None:
        """In lines mode: `label done/total unit (p%) · info · [rate ·] ETA`, throttled unless forced."""
        now = time.perf_counter()
        if self.mode != "lines" or (not force and now - self._last_line < self.every_s):
            return
        self._last_line, self._line_done = now, self.done
        self._print(self.format_line(self.info if info is None else info))

    def format_line(self, info: str = "") -> str:
        r = self.rate
        pct = f" ({100 * r.done / r.total:.0f}%)" if r.total else ""
        parts = [f"{self.label} {r.done:,.0f}/{r.total:,.0f} {self.unit}{pct}"]
        if info:
            parts.append(info)
        if self.show_rate and r.per_second is not None:
            parts.append(f"{r.per_second:,.1f} {self.unit}/s")
        left = r.seconds_left
        if left is not None or r.done < r.total:  # a finished job without a measured rate: no ETA to give
            parts.append(f"ETA {fmt_duration(left)}" if left is not None else "ETA —")
        return " · ".join(parts)

    def note(self, text: str) -> None:
        """A message that must be seen in any mode (above the bar in a terminal)."""
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            self._print(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        if self._line_done != self.done:  # piped: the count reached, even for work shorter than every_s
            self.line(force=True)
        self.close()
