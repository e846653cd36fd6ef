"""Fitting a run to train.time_budget before its first step: trial steps, timed, then undone.

`TimedLength` is the Trainer's `fix_length` for a run with a time budget (launch.build_trainer):

- A new run, or a resume with --replan: every rank takes trial steps from where the run starts
  (its real batches and step, DDP and torch.compile included) until `trial_seconds` have passed
  after the cold first step(s), which pay for allocation and compiling and are not timed. Then the
  main rank writes one checkpoint (with report.html) and one preview grid into a temporary folder,
  timing each, and estimates one FID probe from one batch of its samples. Then the model, EMA,
  optimizer and random states are put back as they were: the run trains exactly as a run of a
  fixed length would, and the time the trial took counts as start-up. The main rank fits the
  length (`budget.steps_within`) and every rank takes its number.
- A resume without --replan keeps the length its run info holds: the schedule goes on as planned.
- A fitted run refits its length twice, early, from its own steps (train/refit.py).
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor, nn

from ddpmkit.errors import DdpmkitError
from ddpmkit.fid import FidMonitor
from ddpmkit.fid.stats import frechet_distance
from ddpmkit.human import fmt_duration, parse_duration
from ddpmkit.images import to_uint8
from ddpmkit.report import write_report
from ddpmkit.train.budget import BudgetPlan, Costs, Every, steps_within
from ddpmkit.train.periodic import FidProbe, PreviewGrids, ema_images
from ddpmkit.train.refit import Refit, refit_steps
from ddpmkit.train.rundir import RunDir
from ddpmkit.train.state import TrainState
from ddpmkit.train.trainer import Log, Trainer

# How long the trial steps run: 0.5% of the budget, at least 2 s (a speed worth the name), at most
# 30 s (an hour's estimate is good to well under 1% by then); and at least 3 timed steps.
TRIAL_SHARE, TRIAL_MIN_S, TRIAL_MAX_S, TRIAL_MIN_STEPS = 0.005, 2.0, 30.0, 3


def trial_seconds(budget_s: float) -> float:
    return min(TRIAL_MAX_S, max(TRIAL_MIN_S, TRIAL_SHARE * budget_s))


@dataclass
class TimedLength:
    """Sets a Trainer's length from its time budget (the module docstring says how)."""

    budget: str  # train.time_budget, e.g. "60m"
    started: float  # time.monotonic() when the budget's clock started
    every: Every
    replan: bool = False  # on a resume: fit the rest of the run to the budget, from now
    log: Log = print  # the main rank's; silent on the others

    def __call__(self, trainer: Trainer, resumed: bool) -> None:
        if resumed and not self.replan:
            planned = trainer.planned_before
            kept = int(trainer.dist.from_main([float(planned) if isinstance(planned, int) else -1.0])[0])
            if kept > 0:
                trainer.set_total(kept)
                self.log(f"the run keeps its planned length, {kept:,} steps; --replan fits the rest of it to "
                         f"train.time_budget ({self.budget}) from now")
                return
            self.log(f"note: {trainer.run_dir.info.name} holds no planned length: fitting the rest of the run "
                     "to train.time_budget")
        self.fit(trainer, resumed)

    def fit(self, trainer: Trainer, resumed: bool) -> None:
        budget_s, start = parse_duration(self.budget), trainer.step
        window = trial_seconds(budget_s)
        self.log(f"fitting the run to {self.budget}: trial steps for {window:.0f}s, a checkpoint and a preview "
                 "are timed, then undone")
        costs = measure(trainer, window)
        spent = time.monotonic() - self.started
        end = steps_within(budget_s - spent, start, costs, self.every) if trainer.dist.is_main else 0
        end = int(trainer.dist.from_main([float(end)])[0])
        if end <= start:
            one = costs.step_s + costs.checkpoint_s
            raise DdpmkitError(f"train.time_budget {self.budget} is spent before the first step: start-up and the "
                               f"trial took {fmt_duration(spent)} and a step with its checkpoint takes "
                               f"{one:.2g}s; give more time")
        plan = BudgetPlan(self.budget, budget_s, start, end, spent, trainer.cfg.batch_size, costs, self.every)
        trainer.set_total(end)
        at = refit_steps(start, end, budget_s, costs.step_s) if trainer.dist.is_main else ()
        at = tuple(int(a) for a in trainer.dist.from_main([float(a) for a in (*at, -1, -1)[:2]]) if a > 0)
        if at:  # early: the run's own steps measure its pace better than the trial (train/refit.py)
            trainer.on_step.append(Refit(budget_s, self.started, costs, self.every, at, self.log))
        trainer.plan.fit = plan.fit()
        trainer.run_info["budget"] = plan.record()
        if resumed and trainer.dist.is_main:
            trainer.run_dir.update_info(budget=plan.record())
        self.log(plan.breakdown())


def measure(trainer: Trainer, window_s: float) -> Costs:
    """This run's costs on this machine (the periodic jobs' on the main rank; 0 elsewhere). The
    training state is put back as it was, whatever happens."""
    st, p = trainer.state, trainer.periodic
    saved = Snapshot.take(st)
    try:
        step_s = time_steps(trainer, window_s)
        checkpoint_s = preview_s = fid_s = 0.0
        if trainer.dist.is_main:
            with tempfile.TemporaryDirectory(prefix="ddpmkit-trial-") as tmp:
                checkpoint_s = time_checkpoint(trainer, Path(tmp))
                preview_s = time_preview(p.preview, st.ema.model, Path(tmp)) if p.preview else 0.0
            fid_s = estimate_fid(p.fid, st.ema.model) if p.fid else 0.0
        trainer.dist.barrier()
    finally:
        saved.restore(st)
    return Costs(step_s, checkpoint_s, preview_s, fid_s)


def time_steps(trainer: Trainer, window_s: float) -> float:
    """Seconds per training step, from trial steps timed after the cold first one (the network is
    compiled before it, `OptimizerStep.warm_up`) until `window_s` and TRIAL_MIN_STEPS have passed. The ranks agree when to stop as
    the loop does, one step late, so every rank takes as many steps."""
    trainer.stepper.warm_up(trainer.log if trainer.dist.is_main else (lambda line: None))  # compiling is start-up
    cold = 1
    agreed: Callable[[], bool] = lambda: False  # noqa: E731
    t0, n = 0.0, 0
    for batch in _batches(trainer):
        trainer.train_step(*batch) if isinstance(batch, tuple) else trainer.train_step(batch)
        n += 1
        if n == cold:
            _wait(trainer.device)
            t0 = time.perf_counter()
        elif n > cold:
            done = n - cold >= TRIAL_MIN_STEPS and time.perf_counter() - t0 >= window_s
            stop, agreed = agreed(), trainer.dist.any_rank_later(done)
            if stop:
                break
    _wait(trainer.device)
    return (time.perf_counter() - t0) / (n - cold)


def time_checkpoint(trainer: Trainer, folder: Path) -> float:
    """Seconds of one checkpoint as the trainer writes it (with report.html when train.report is
    on), written into a run made for it in `folder`."""
    st, rd = trainer.state, RunDir(folder / "run")
    rd.create_for(st.settings, trainer.run_info)
    t0 = time.perf_counter()
    st.save(rd.checkpoints, world_size=trainer.dist.world_size, keep=1)
    if trainer.cfg.report:
        try:
            write_report(rd.path)
        except Exception:  # the trainer never lets the report stop a run; its time is what counts here
            pass
    return time.perf_counter() - t0


def time_preview(preview: PreviewGrids, ema_model: nn.Module, folder: Path) -> float:
    """Seconds of one preview grid, written into `folder`."""
    t0 = time.perf_counter()
    dataclasses.replace(preview, out_dir=folder / "samples", tensorboard=None)(ema_model, 0)
    return time.perf_counter() - t0


def estimate_fid(probe: FidProbe, ema_model: nn.Module) -> float:
    """Seconds of one FID probe: one batch of its samples and their Inception features, timed and
    scaled to its n, plus one Fréchet distance (its eigen-decompositions do not grow with n)."""
    k = min(probe.n, probe.cfg.batch_size)
    t0 = time.perf_counter()
    x = ema_images(probe.denoiser.with_model(ema_model), probe.cfg, k, probe.shape, seed=0)
    monitor = probe.monitor
    if not isinstance(monitor, FidMonitor):
        monitor([to_uint8(x)])
        return (time.perf_counter() - t0) * probe.n / k
    monitor.extractor.features([to_uint8(x)])
    batch_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    frechet_distance(monitor.reference, monitor.reference)
    return batch_s * probe.n / k + time.perf_counter() - t0


@dataclass
class Snapshot:
    """Everything a training step changes in a TrainState, copied to host memory (a GPU that just
    fits the run need not hold it twice), to be put back."""

    model: dict[str, Tensor]
    ema: dict[str, Tensor]
    ema_updates: int
    optimizer: dict[str, Any]
    rng_cpu: Tensor
    rng_cuda: Optional[Tensor]
    rng_gen: Tensor

    @classmethod
    def take(cls, st: TrainState) -> "Snapshot":
        cuda = torch.cuda.get_rng_state(st.device) if st.device.type == "cuda" else None
        return cls(_host_copy(st.model.state_dict()), _host_copy(st.ema.model.state_dict()), st.ema.num_updates,
                   _host_copy(st.optimizer.state_dict()), torch.get_rng_state(), cuda, st.gen.get_state())

    def restore(self, st: TrainState) -> None:
        """Put the copies back (loading a state dict moves each tensor to its parameter's device)."""
        st.model.load_state_dict(self.model)
        st.ema.model.load_state_dict(self.ema)
        st.ema.num_updates = self.ema_updates
        st.optimizer.load_state_dict(self.optimizer)
        torch.set_rng_state(self.rng_cpu)
        if self.rng_cuda is not None:
            torch.cuda.set_rng_state(self.rng_cuda, st.device)
        st.gen.set_state(self.rng_gen)


def _host_copy(obj: Any) -> Any:
    """A copy of a state dict (nested dicts, lists, tensors, numbers) with every tensor in host memory."""
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _host_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_host_copy(v) for v in obj)
    return copy.deepcopy(obj)


def _batches(trainer: Trainer) -> Iterator[Any]:
    """The run's batches from its current position on, epoch after epoch."""
    epoch, start = trainer.state.epoch, trainer.state.batch_in_epoch
    while True:
        yield from trainer.batches.epoch(epoch, start_batch=start)
        epoch, start = epoch + 1, 0


def _wait(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs ahead of the host), for timing."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
