"""Refitting a time-budgeted run once, early, from the speed of its own first steps.

The trial before step 1 (train/trial.py) times a few seconds of steps; a machine still settling
(files coming into the page cache, the allocator warming, a core busy with start-up) can make
them 5-10% slower than the run's steady pace, and the run then ends that much before its budget.
So, once, after REFIT_SHARE of the budget (at least REFIT_MIN_S) has gone into steps, the main
rank fits the rest of the run again (`budget.steps_within`) from the median step time so far,
and every rank takes the new length when it differs by more than REFIT_TOLERANCE. The schedule
follows the new length from there: the final learning rate is still reached at the last step.
A run too short to measure more than the trial did (the refit would fall after REFIT_LATEST of
it) is left as fitted.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from ddpmkit.train.budget import Costs, Every, steps_within
from ddpmkit.train.trainer import Log, Trainer

REFIT_SHARE, REFIT_MIN_S = 0.03, 60.0  # when: 3% of the budget, and at least a minute of steps
REFIT_LATEST = 0.25  # no refit later than this share of the run's steps
REFIT_TOLERANCE = 0.01  # a new length within 1% of the old is no change
REFIT_MIN_STEPS = 3  # the median of at least two step times


def refit_step(start: int, end: int, budget_s: float, step_s: float) -> Optional[int]:
    """The step after which to refit a run fitted to steps start..end, or None when that would
    fall after REFIT_LATEST of the run."""
    at = start + max(REFIT_MIN_STEPS, math.ceil(max(REFIT_MIN_S, REFIT_SHARE * budget_s) / step_s))
    return at if at - start <= REFIT_LATEST * (end - start) else None


@dataclass
class Refit:
    """An on_step callback of the Trainer (all ranks): records when each step ends and, at step
    `at`, refits the run's length once."""

    budget_s: float
    started: float  # time.monotonic() when the budget's clock started
    costs: Costs
    every: Every
    at: int
    log: Log = print  # the main rank's; silent on the others
    ends: list[float] = field(default_factory=list)
    done: bool = False

    def __call__(self, trainer: Trainer) -> None:
        if self.done:
            return
        self.ends.append(time.perf_counter())
        if trainer.step < self.at:
            return
        self.done = True
        was = trainer.total
        new = self.new_end(trainer.step) if trainer.dist.is_main else 0
        new = int(trainer.dist.from_main([float(new)])[0])
        if new <= trainer.step + 1 or abs(new - was) <= REFIT_TOLERANCE * was:
            return
        trainer.set_total(new)
        trainer.retotal_progress()
        if trainer.dist.is_main:
            record: dict[str, Any] = {**trainer.run_info.get("budget", {}), "total_steps": new,
                                      "refit": {"at_step": trainer.step, "step_s": round(self.step_s(), 6),
                                                "total_before": was}}
            trainer.run_info["budget"] = record
            trainer.run_dir.update_info(total_steps=new, budget=record)
        rate = trainer.cfg.batch_size / self.step_s() if trainer.dist.is_main else 0.0
        self.log(f"refitted to the budget after {trainer.step:,} steps at {rate:,.1f} img/s: {new:,} steps "
                 f"(was {was:,})")

    def step_s(self) -> float:
        """The median time between step ends so far (a step that also saved or sampled is an outlier)."""
        return statistics.median(b - a for a, b in zip(self.ends, self.ends[1:]))

    def new_end(self, step: int) -> int:
        left = self.budget_s - (time.monotonic() - self.started)
        return steps_within(left, step, dataclasses.replace(self.costs, step_s=self.step_s()), self.every)
