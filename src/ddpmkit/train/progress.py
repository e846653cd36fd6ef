"""What a training run tells its user: the plan line, the ETA once measured, progress per log.

In a terminal a rich bar (step/total, the last logged loss, time left; `loss —` before the first
log); piped to a file, one plain line per `train.log_every` steps: step/total, loss, lr, img/s, ETA.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from rich.console import Console

from ddpmkit.human import fmt_duration
from ddpmkit.progress import Mode, Progress, make_console

Log = Callable[[str], None]
CPU_PATIENCE_S = 12 * 3600  # longer than a night on a CPU is not "reasonable": warn


@dataclass
class Plan:
    """The run as announced before its first step."""

    preset: Optional[str]
    why: str  # why this preset (the CLI's choice), "" when the user named it
    parameters: int
    data: str  # e.g. "celeba split train, 32x32 px, 162,770 images"
    batch_size: int
    start: int  # the step the run starts at (0, or the step resumed from)
    total: int
    epochs: float  # of the data, for the whole run
    device: str
    cpu_alternative: Optional[str] = None  # the preset to suggest if this one is too slow on a CPU
    fit: str = ""  # a length fitted to a time budget, e.g. "4,812 steps fit in 60m at 85.3 img/s"
    speed: str = ""  # precision, compile, micro-batches (launch.speed_line)

    def line(self) -> str:
        preset = f"preset {self.preset}" if self.preset else "no preset"
        why = f" ({self.why})" if self.why else ""
        steps = f"steps {self.start:,} → {self.total:,}" if self.start else f"{self.total:,} steps"
        steps = self.fit or steps
        epochs = f"{self.epochs:,.0f}" if self.epochs >= 100 else f"{self.epochs:.3g}"
        speed = f" · {self.speed}" if self.speed else ""
        return (f"training {self.parameters / 1e6:.2f}M parameters, {preset}{why} · data: {self.data} · "
                f"batch {self.batch_size} · {steps} ({epochs} epochs) · device {self.device}{speed}")

    def eta_lines(self, seconds_per_step: float, step: int, measured_over: tuple[int, int]) -> list[str]:
        """The ETA line, and on a CPU a warning when the rest of the run takes too long."""
        left = seconds_per_step * (self.total - step)
        a, b = measured_over
        over = f"step {b}" if b == a + 1 else f"steps {a + 1}-{b}"
        lines = [f"ETA {fmt_duration(left)} for the remaining {self.total - step:,} steps "
                 f"({seconds_per_step:.3g} s/step over {over}; previews and checkpoints not counted)"]
        if self.device.startswith("cpu") and left > CPU_PATIENCE_S:
            if self.cpu_alternative:
                instead = f"use --preset {self.cpu_alternative} for a CPU, or a GPU"
            else:
                fits = max(1, int(CPU_PATIENCE_S / seconds_per_step))
                instead = f"--max-steps {fits:,} fits in {fmt_duration(CPU_PATIENCE_S)}"
            lines.append(f"warning: {self.preset or 'this model'} ({self.parameters / 1e6:.1f}M parameters) needs "
                         f"about {fmt_duration(left)} on this CPU; {instead}")
        return lines


class StepClock:
    """Seconds per step, measured once: from the end of the first step (which pays for warm-up)
    until at least 3 steps and 2 s have passed (or 30 s, or 50 steps). `sync` waits for queued
    device work (CUDA runs ahead of the host); it is called only at the two ends."""

    def __init__(self, sync: Callable[[], None] = lambda: None) -> None:
        self.sync = sync
        self._start: Optional[tuple[float, int]] = None
        self._excluded = 0.0  # seconds of previews and checkpoints inside the window
        self.measured: Optional[tuple[float, int, int]] = None  # (s/step, from step, to step)

    def exclude(self, seconds: float) -> None:
        """Leave out work that is not a training step (a preview grid, a checkpoint)."""
        if self._start is not None:
            self._excluded += seconds

    def tick(self, step: int) -> Optional[tuple[float, int, int]]:
        """Call after each step; returns the measurement once, when it completes."""
        if self.measured is not None:
            return None
        if self._start is None:
            self.sync()
            self._start = (time.perf_counter(), step)
            return None
        t0, s0 = self._start
        n, elapsed = step - s0, time.perf_counter() - t0 - self._excluded
        if not ((n >= 3 and elapsed >= 2.0) or elapsed >= 30.0 or n >= 50):
            return None
        self.sync()
        elapsed = time.perf_counter() - t0 - self._excluded
        self.measured = (elapsed / n, s0, step)
        return self.measured


class TrainProgress:
    """The bar or the plain lines of one run, and its ETA (announced once measured)."""

    def __init__(self, plan: Plan, mode: Mode | bool, log: Log, console: Optional[Console] = None,
                 sync: Callable[[], None] = lambda: None) -> None:
        self.plan, self.log = plan, log
        self.clock = StepClock(sync)
        self._progress: Optional[Progress] = None
        if mode is not False and mode != "off":
            self._progress = Progress("train", plan.total, done=plan.start, mode=mode,
                                      console=console or make_console(), print_line=log, info="loss —")

    def stepped(self, step: int) -> None:
        if self._progress is not None:
            self._progress.update(step)
        measured = self.clock.tick(step)
        if measured is not None:
            sps, a, b = measured
            for line in self.plan.eta_lines(sps, step, (a, b)):
                self.note(line)

    def logged(self, record: dict[str, Any]) -> None:
        """After each log: the bar shows the loss; piped, one plain line."""
        if self._progress is None:
            return
        self._progress.update(int(record["step"]), info=f"loss {record['loss']:.4f}")
        info = f"loss {record['loss']:.4f} · lr {record['lr']:.2e} · {record['img_per_s']:,.1f} img/s"
        self._progress.line(info, force=True)

    def retotal(self, total: int) -> None:
        """A new length for the bar (a time-budgeted run refitted early)."""
        if self._progress is not None:
            self._progress.set_total(total)

    def note(self, text: str) -> None:
        if self._progress is not None:
            self._progress.note(text)
        else:
            self.log(text)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
