"""Refitting a time-budgeted run, early, from the speed of its own steps.

The trial before step 1 (train/trial.py) times a few seconds of steps, and a machine's pace moves
after it. In three `celeba32` hours on a 2-core machine the trial, taken while the machine was
still settling, once ran 7% slower than the hour that followed (which ended 4 minutes early); twice
the first minutes kept the trial's pace and the machine then slowed by 7% and 11% over the next ten
(those runs ended late). So the main rank fits the rest of the run again (`budget.steps_within`)
twice: after REFIT_SHARE of the budget (at least REFIT_MIN_S) has gone into steps, from the median
step time so far, and at REFIT_LATEST of the run, from the median since the first refit (the
settled pace). Every rank takes a new length that differs by more than REFIT_TOLERANCE. The
schedule follows the new length from there: the final learning rate is still reached at the last
step (a 5% change at a quarter of a cosine schedule moves its value by about 1%). A run too short
for a refit to measure more than the trial did is left as fitted.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from ddpmkit.train.budget import Costs, Every, steps_within
from ddpmkit.train.trainer import Log, Trainer

REFIT_SHARE, REFIT_MIN_S = 0.03, 60.0  # when: 3% of the budget, and at least a minute of steps
REFIT_LATEST = 0.25  # no refit later than this share of the run's steps
REFIT_TOLERANCE = 0.01  # a new length within 1% of the old is no change
REFIT_MIN_STEPS = 3  # the median of at least two step times


def refit_steps(start: int, end: int, budget_s: float, step_s: float) -> tuple[int, ...]:
    """The steps after which to refit a run fitted to steps start..end: the first once a minute or
    REFIT_SHARE of the budget is measured, the second at REFIT_LATEST of the run when it measures at
    least as many steps as the first did; none where the first would fall after REFIT_LATEST."""
    first = start + max(REFIT_MIN_STEPS, math.ceil(max(REFIT_MIN_S, REFIT_SHARE * budget_s) / step_s))
    latest = start + int(REFIT_LATEST * (end - start))
    if first > latest:
        return ()
    return (first, latest) if latest - first >= first - start else (first,)


@dataclass
class Refit:
    """An on_step callback of the Trainer (all ranks): records when each step ends and, at each step
    of `at`, refits the run's length from the step times since the previous refit."""

    budget_s: float
    started: float  # time.monotonic() when the budget's clock started
    costs: Costs
    every: Every
    at: tuple[int, ...]
    log: Log = print  # the main rank's; silent on the others
    ends: list[float] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return not self.at

    def __call__(self, trainer: Trainer) -> None:
        if self.done:
            return
        self.ends.append(time.perf_counter())
        if trainer.step < self.at[0]:
            return
        self.at = self.at[1:]
        self.refit(trainer)
        self.ends = self.ends[-1:]  # the next refit measures the pace from here on

    def refit(self, trainer: Trainer) -> None:
        was = trainer.total
        new = self.new_end(trainer.step) if trainer.dist.is_main else 0
        new = int(trainer.dist.from_main([float(new)])[0])
        if new <= trainer.step + 1 or abs(new - was) <= REFIT_TOLERANCE * was:
            return
        trainer.set_total(new)
        trainer.retotal_progress()
        if trainer.dist.is_main:
            budget = trainer.run_info.get("budget", {})
            this = {"at_step": trainer.step, "step_s": round(self.step_s(), 6), "total_before": was}
            record: dict[str, Any] = {**budget, "total_steps": new, "refits": [*budget.get("refits", []), this]}
            trainer.run_info["budget"] = record
            trainer.run_dir.update_info(total_steps=new, budget=record)
        rate = trainer.cfg.batch_size / self.step_s() if trainer.dist.is_main else 0.0
        self.log(f"refitted to the budget after {trainer.step:,} steps at {rate:,.1f} img/s: {new:,} steps "
                 f"(was {was:,})")

    def step_s(self) -> float:
        """The median time between step ends since the last refit (a step that also saved or sampled
        is an outlier)."""
        return statistics.median(b - a for a, b in zip(self.ends, self.ends[1:]))

    def new_end(self, step: int) -> int:
        left = self.budget_s - (time.monotonic() - self.started)
        return steps_within(left, step, dataclasses.replace(self.costs, step_s=self.step_s()), self.every)
