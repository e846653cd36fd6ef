"""Progress of long work: a rich bar in a terminal, plain lines in a log file (piped, nohup, a job).

    p = Progress("sample", total=250 * 4, unit="steps", mode="auto", console=make_console())
    p.update(done, info="images 64/256")       # every step: moves the bar
    p.line(info="images 64/256")               # when piped: one plain line (throttled unless force)
    p.close()

The rate and the time left are measured from the first update on, so the first step (which pays
for warm-up: allocation, cudnn autotune, torch.compile) does not skew them.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Literal, Optional

from rich.console import Console, ConsoleDimensions
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as _RichProgress

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


def fmt_duration(seconds: float) -> str:
    """4s, 3m 05s, 2h 10m, 3d 4h."""
    s = max(0, int(round(seconds)))
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m:02d}m"
    return f"{m}m {s % 60:02d}s" if m else f"{s}s"


def resolve_mode(mode: Mode | bool, console: Console) -> Mode:
    """auto (or True): a bar in a terminal, plain lines otherwise; False: off."""
    if mode is True or mode == "auto":
        return "bar" if console.is_terminal else "lines"
    if mode is False:
        return "off"
    return mode


class Rate:
    """Units per second since the first update, and the time left for `total`."""

    def __init__(self, total: int, done: int = 0) -> None:
        self.total = total
        self._start: Optional[tuple[float, int]] = None  # (time, done) of the first update
        self.done = done

    def update(self, done: int) -> None:
        if self._start is None:
            self._start = (time.perf_counter(), self.done)
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
    forced, so a log file gets a steady trickle, not one line per step.
    """

    def __init__(
        self,
        label: str,
        total: int,
        *,
        unit: str = "steps",
        done: int = 0,
        mode: Mode | bool = "auto",
        console: Optional[Console] = None,
        print_line: Optional[Callable[[str], None]] = None,
        every_s: float = 10.0,
        info: str = "",
    ) -> None:
        self.console = console or make_console()
        self.mode = resolve_mode(mode, self.console)
        self.label, self.unit, self.every_s = label, unit, every_s
        self.rate = Rate(total, done)
        self._print = print_line or (lambda text: self.console.print(text, markup=False, highlight=False))
        self._last_line = time.perf_counter()
        self._bar: Optional[_RichProgress] = None
        if self.mode == "bar":
            self._bar = _RichProgress(
                TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                console=self.console, transient=False,
            )
            self._task = self._bar.add_task(label, total=total, completed=done, info=info)
            self._bar.start()

    @property
    def done(self) -> int:
        return self.rate.done

    def update(self, done: int, info: Optional[str] = None) -> None:
        self.rate.update(done)
        if self._bar is not None:
            fields = {} if info is None else {"info": info}
            self._bar.update(self._task, completed=done, **fields)

    def line(self, info: str = "", force: bool = False) -> None:
        """In lines mode: `label done/total unit (p%) · info · ETA`, throttled unless forced."""
        now = time.perf_counter()
        if self.mode != "lines" or (not force and now - self._last_line < self.every_s):
            return
        self._last_line = now
        self._print(self.format_line(info))

    def format_line(self, info: str = "") -> str:
        r = self.rate
        pct = f" ({100 * r.done / r.total:.0f}%)" if r.total else ""
        parts = [f"{self.label} {r.done:,}/{r.total:,} {self.unit}{pct}"]
        if info:
            parts.append(info)
        left = r.seconds_left
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
