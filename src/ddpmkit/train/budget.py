"""A run sized to a time budget (train.time_budget, `ddpmkit train --time 60m`): the arithmetic.

The budget counts from the start of `ddpmkit train` (of `train()` when called from Python) to its
last line. Before the first step the trainer times trial steps and one of each periodic job
(train/trial.py), undoes them, and asks `steps_within` how many steps fit in what is left:

    seconds(start -> end) = (end - start) * step_s
                          + checkpoints * checkpoint_s   every train.ckpt_every steps before the end, + the final one
                          + previews * preview_s         every train.sample_every steps, + the final grid
                          + probes * fid_s               every fid.every steps

The step count is then fixed: the learning-rate schedule, its warm-up (train.warmup_fraction) and
the bar are sized to it, it is written to the run info, and a resume continues it. Nothing here
imports torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

from ddpmkit.human import fmt_duration
from ddpmkit.settings import TrainConfig


@dataclass(frozen=True)
class Costs:
    """Seconds of each kind of work, as measured before the run (all > 0 or 0 for none)."""

    step_s: float  # one training step, after the cold first one(s)
    checkpoint_s: float = 0.0  # one checkpoint with its report.html
    preview_s: float = 0.0  # one preview grid
    fid_s: float = 0.0  # one FID probe


@dataclass(frozen=True)
class Every:
    """The intervals of the periodic jobs, in steps; 0 = never (checkpoints: only the final one)."""

    checkpoint: int = 0
    preview: int = 0
    fid: int = 0


@dataclass(frozen=True)
class Events:
    checkpoints: int
    previews: int
    probes: int


def _multiples(lo: int, hi: int, k: int) -> int:
    """How many multiples of k lie in (lo, hi]; 0 when k is 0."""
    return hi // k - lo // k if k > 0 and hi > lo else 0


def events(start: int, end: int, every: Every) -> Events:
    """The periodic work of training steps start+1..end, as the trainer does it: a checkpoint at
    every multiple before the end and one at the end; a grid at every multiple, and one at the end
    when the end is none; an FID probe at every multiple."""
    if end <= start:
        return Events(0, 0, 0)
    final_grid = 1 if every.preview and end % every.preview else 0
    return Events(_multiples(start, end - 1, every.checkpoint) + 1,
                  _multiples(start, end, every.preview) + final_grid,
                  _multiples(start, end, every.fid))


def run_seconds(start: int, end: int, costs: Costs, every: Every) -> float:
    """Seconds from the step after `start` to the end of a run that stops at step `end`."""
    e = events(start, end, every)
    return ((end - start) * costs.step_s + e.checkpoints * costs.checkpoint_s
            + e.previews * costs.preview_s + e.probes * costs.fid_s)


def steps_within(seconds: float, start: int, costs: Costs, every: Every) -> int:
    """The last step of the longest run from `start` that takes at most `seconds`; `start` when
    not even one step (with its checkpoint) fits. run_seconds grows with the end, so bisect."""
    if costs.step_s <= 0:
        raise ValueError(f"a step takes {costs.step_s} s: measure it first")
    if run_seconds(start, start + 1, costs, every) > seconds:
        return start
    lo, hi = start + 1, start + 1 + math.ceil(seconds / costs.step_s)  # lo fits; hi cannot
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if run_seconds(start, mid, costs, every) <= seconds else (lo, mid)
    return lo


@dataclass(frozen=True)
class BudgetPlan:
    """A length fitted to a budget: what the plan line says and the run info keeps (under "budget")."""

    budget: str  # train.time_budget as written, e.g. "60m"
    budget_s: float
    start: int  # the step it was fitted from: 0, or the step of a resume with --replan
    total: int  # the run's last step
    spent_s: float  # gone before the first step: start-up and the trial
    batch_size: int
    costs: Costs
    every: Every

    @property
    def img_per_s(self) -> float:
        return self.batch_size / self.costs.step_s

    def fit(self) -> str:
        """E.g. "4,812 steps fit in 60m at 85.3 img/s" (from a resumed step: "steps 2,000 → 6,812: ...")."""
        n = f"{self.total - self.start:,} steps fit in {self.budget} at {self.img_per_s:,.1f} img/s"
        return f"steps {self.start:,} → {self.total:,}: {n}" if self.start else n

    def breakdown(self) -> str:
        """Where the budget goes, one line."""
        e, c = events(self.start, self.total, self.every), self.costs
        parts = [f"start-up and trial {fmt_duration(self.spent_s)}",
                 f"{self.total - self.start:,} steps {fmt_duration((self.total - self.start) * c.step_s)}",
                 f"{_count(e.checkpoints, 'checkpoint')} {fmt_duration(e.checkpoints * c.checkpoint_s)}"]
        if e.previews:
            parts.append(f"{_count(e.previews, 'preview grid')} {fmt_duration(e.previews * c.preview_s)}")
        if e.probes:
            parts.append(f"{_count(e.probes, 'FID probe')} {fmt_duration(e.probes * c.fid_s)}")
        left = self.budget_s - self.spent_s - run_seconds(self.start, self.total, c, self.every)
        return f"budget {self.budget}: " + ", ".join(parts) + f"; {fmt_duration(left)} to spare"

    def record(self) -> dict[str, Any]:
        """The run info's "budget": the measurements the length was fitted from."""
        return {"time": self.budget, "seconds": self.budget_s, "fitted_at_step": self.start,
                "total_steps": self.total, "spent_s": round(self.spent_s, 3),
                "img_per_s": round(self.img_per_s, 2),
                **{k: round(v, 6) for k, v in asdict(self.costs).items()}, "every": asdict(self.every)}


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}" + ("" if n == 1 else "s")


def budgeted(cfg: TrainConfig) -> bool:
    """Whether the run's length is fitted to train.time_budget: a budget, and no step count."""
    return cfg.time_budget is not None and cfg.max_steps is None and cfg.epochs is None


def length_rule(cfg: TrainConfig) -> Optional[str]:
    """One line when both a step count and a time budget are set: the step count wins."""
    if cfg.time_budget is None or budgeted(cfg):
        return None
    count = f"train.max_steps {cfg.max_steps:,}" if cfg.max_steps is not None else f"train.epochs {cfg.epochs:,}"
    return (f"note: {count} wins over train.time_budget {cfg.time_budget}: the run has a fixed length "
            "(a time budget alone fits the length to this machine)")
