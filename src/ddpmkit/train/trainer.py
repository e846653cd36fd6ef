"""The training loop: L_simple with Adam, warm-up, clipping and EMA; logs and checkpoints.

One process or many under torchrun (DistributedDataParallel); the step itself (micro-batches,
precision, loss scaling, clipping, EMA) is `step.OptimizerStep`. The learning rate, the EMA and
`step` count optimizer steps; fp16 steps that the loss scaler skipped are counted in the run log
(`skipped_steps`).

`launch.build_trainer` validates the settings and builds the pieces; the Trainer only runs them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor, nn

from ddpmkit.compiling import Compiled
from ddpmkit.data.loader import ImageBatches
from ddpmkit.device import DistInfo
from ddpmkit.errors import DdpmkitError
from ddpmkit.progress import Mode
from ddpmkit.report import write_report
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.settings import TrainConfig
from ddpmkit.train.optim import lr_at, set_lr, warmup_of
from ddpmkit.train.periodic import Periodic, StopSignals
from ddpmkit.train.progress import Plan, TrainProgress
from ddpmkit.runfolder import step_dir_name
from ddpmkit.train.rundir import JsonlLogger, RunDir
from ddpmkit.train.state import TrainState
from ddpmkit.train.step import OptimizerStep

Log = Callable[[str], None]
FixLength = Callable[["Trainer", bool], None]  # (trainer, resumed): sets the run's length before step 1


@dataclass
class TrainResult:
    """How a run ended; the same on every rank."""

    step: int
    epoch: int
    run_dir: Path
    last_loss: float  # mean loss of the last logged steps (over all ranks); nan if none logged
    interrupted: bool  # stopped by a signal or request_stop() before the planned length
    checkpoint: Optional[Path]
    history: list[dict[str, Any]] = field(default_factory=list)


class LossWindow:
    """The losses of the steps since the last log, kept on the device: no host sync per step; and
    (fp16) whether the loss scaler skipped each step."""

    def __init__(self) -> None:
        self.losses: list[Tensor] = []
        self.skips: list[Tensor] = []

    def add(self, loss: Tensor, skipped: Optional[Tensor] = None) -> None:
        self.losses.append(loss)
        if skipped is not None:
            self.skips.append(skipped)

    def skipped(self) -> Optional[int]:
        """Steps skipped since the last log (the same on every rank: the gradients are all-reduced);
        None when nothing is scaled."""
        return int(torch.stack(self.skips).sum()) if self.skips else None

    def values(self, dist: DistInfo, step: int) -> list[float]:
        """Each step's loss, averaged over the ranks. Raises DdpmkitError naming the first step
        whose loss is not finite (every rank sees the same values, so all stop alike)."""
        if not self.losses:
            return []
        per_step = dist.all_mean(torch.stack(self.losses)).tolist()
        for k, v in enumerate(per_step):
            if not math.isfinite(v):
                raise NonFinite(f"the loss is {v} at step {step - len(per_step) + 1 + k}")
        return per_step

    def clear(self) -> None:
        self.losses, self.skips = [], []


class NonFinite(DdpmkitError):
    """The loss or the weights stopped being finite numbers."""


class Trainer:
    """Runs the loop over prepared pieces. `open(resume)`, then `run()`; `request_stop()` from anywhere."""

    def __init__(
        self,
        state: TrainState,
        batches: ImageBatches,
        sched: NoiseSchedule,
        cfg: TrainConfig,
        *,
        net: nn.Module | Compiled,
        total: int,
        run_dir: RunDir,
        run_info: dict[str, Any],
        plan: Plan,
        dist: DistInfo,
        periodic: Periodic,
        log_file: Optional[JsonlLogger],
        progress: Mode | bool = "auto",
        log: Log = print,
        on_step: Iterable[Callable[["Trainer"], None]] = (),
        fix_length: Optional[FixLength] = None,
        ddp: Optional[nn.parallel.DistributedDataParallel] = None,
    ) -> None:
        self.state, self.batches, self.sched, self.cfg = state, batches, sched, cfg
        # net: the model as trained (DDP- and/or compile-wrapped state.model); ddp: its DDP wrapper
        self.stepper = OptimizerStep(state, sched, cfg, net=net, ddp=ddp, dist=dist)
        self.run_dir, self.run_info, self.plan = run_dir, run_info, plan
        self.set_total(total)
        self.fix_length = fix_length  # None: `total` is the length (train/trial.py fits it to a time budget)
        self.planned_before: Optional[int] = None  # on a resume, the length the run info held (main rank)
        self.dist, self.periodic, self.log_file = dist, periodic, log_file
        self.progress_mode, self.log = progress, log
        self.on_step: list[Callable[["Trainer"], None]] = list(on_step)
        self.device = state.device
        self.window = LossWindow()
        self.history: list[dict[str, Any]] = []
        self.last_loss = math.nan
        self.skipped: Optional[Tensor] = None  # fp16: whether the loss scaler skipped the last step
        self._stop_requested = False  # this rank's wish
        self.interrupted = False  # what all ranks agreed
        self._vote: Callable[[], bool] = lambda: False  # the stop vote of the previous step
        self._progress: Optional[TrainProgress] = None
        self._report_failed = False  # say once that report.html could not be written
        self._mark = (time.perf_counter(), state.step)  # (time, step) of the last log

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.state.model.parameters())

    def set_total(self, total: int) -> None:
        """The run's length in steps, and with it the warm-up's and the plan's."""
        self.total = total  # steps of the whole run; the cosine learning-rate decay ends there
        self.warmup = warmup_of(self.cfg, total)
        self.plan.total, self.plan.epochs = total, total / max(1, len(self.batches))
        self.run_info["total_steps"] = total

    def retotal_progress(self) -> None:
        """The bar's total after `set_total` changed the length mid-run."""
        if self._progress is not None:
            self._progress.retotal(self.total)

    def request_stop(self) -> None:
        """Finish the current step, save a checkpoint and return (what Ctrl-C and SIGTERM do)."""
        self._stop_requested = True

    # ------------------------------------------------------------------ start

    def open(self, resume: bool) -> None:
        """Check the run directory, then create it (a new run) or load its latest checkpoint."""
        d = self.dist
        ckpt = self.run_dir.checkpoint_to_resume(resume)  # raises before anything is written
        d.barrier()  # every rank has looked before rank 0 creates the run
        if ckpt is not None:
            self.state.load(ckpt, rank=d.rank, log=self.log)
            if d.is_main:
                self.log(f"resuming {self.run_dir.path} from step {self.state.step} (epoch {self.state.epoch})")
                self.planned_before = self.run_dir.read_info().get("total_steps")
        if self.fix_length is not None:
            self.fix_length(self, ckpt is not None)  # before anything is written: a refusal leaves no run
        if ckpt is not None and d.is_main:
            self.run_dir.update_info(total_steps=self.total)
        elif d.is_main:
            self.run_dir.create_for(self.state.settings, self.run_info)
        self._mark = (time.perf_counter(), self.state.step)
        self.plan.start = self.state.step
        if d.is_main:
            self.log(self.plan.line())
            self.log(f"run directory {self.run_dir.path}")
        d.barrier()

    # ------------------------------------------------------------------ the loop

    def train_step(self, x0: Tensor, attributes: Optional[Tensor] = None) -> Tensor:
        """One optimizer step on this rank's slice of a global batch (`OptimizerStep.run`).
        x0: (b, 3, H, W) in [-1, 1]; attributes: (b, K) in {-1, 0, +1} for a conditional run.
        Returns the loss (a 0-d tensor on the device)."""
        c, st = self.cfg, self.state
        set_lr(st.optimizer, lr_at(st.step, c.lr, self.warmup, self.total, c.lr_decay))
        loss, self.skipped = self.stepper.run(x0, attributes)
        return loss

    def run(self) -> TrainResult:
        """Train to `total` steps or until stopped; save a checkpoint at the end."""
        st = self.state
        if self.dist.is_main:
            self._progress = TrainProgress(self.plan, self.progress_mode, self.log, sync=self._sync)
        try:
            with StopSignals(self.request_stop, self._main_log):
                self.stepper.warm_up(self._main_log)
                self._loop()
                self._close_progress()  # the bar ends at the last step; what follows says what it does
                ckpt = self.save(report=False)
                if not self.interrupted and self.dist.is_main:
                    self.periodic.final_preview(st.ema.model, st.step, self.log)
                self._report()
        except NonFinite as e:
            latest = self.run_dir.latest_checkpoint(resumable=True)
            kept = f"the last good checkpoint ({latest.name}) is kept" if latest else "no checkpoint was written"
            raise DdpmkitError(f"training stopped: {e}; {kept}; lower train.lr or check the data") from None
        finally:
            self._close_progress()
            if self.log_file is not None:
                self.log_file.close()
        if self.interrupted:
            self._main_log(f"stopped at step {st.step}; checkpoint saved; continue with --resume")
        return TrainResult(st.step, st.epoch, self.run_dir.path, self.last_loss, self.interrupted, ckpt, self.history)

    def _loop(self) -> None:
        st = self.state
        while st.step < self.total and not self.interrupted:
            for batch in self.batches.epoch(st.epoch, start_batch=st.batch_in_epoch):
                loss = self.train_step(*batch) if isinstance(batch, tuple) else self.train_step(batch)
                self.window.add(loss, self.skipped)
                st.step += 1
                st.batch_in_epoch += 1
                for callback in self.on_step:
                    callback(self)
                self.interrupted = self._agree_stop()
                self._between_steps()
                if st.step >= self.total or self.interrupted:
                    break
            else:  # the epoch ran out
                st.epoch += 1
                st.batch_in_epoch = 0

    def _agree_stop(self) -> bool:
        """Whether to stop after this step, the same on every rank. Under DDP each step's votes
        are gathered without waiting and read a step later, so a stop takes effect one step after
        it is asked for; a single process stops at once."""
        if not self.dist.enabled:
            return self._stop_requested
        agreed = self._vote()
        self._vote = self.dist.any_rank_later(self._stop_requested)
        return agreed

    def _between_steps(self) -> None:
        c, step = self.cfg, self.state.step
        work_due = self.periodic.due(step)
        ckpt_due = c.ckpt_every > 0 and step % c.ckpt_every == 0 and step < self.total
        if step % c.log_every == 0 or step == self.total:
            self._write_log()
        elif work_due:
            self.window.values(self.dist, step)  # no grids or FID from a model gone to NaN
        if self._progress is not None:
            self._progress.stepped(step)
        t0 = time.perf_counter()
        if work_due and self.dist.is_main:
            self.periodic.run(self.state.ema.model, step)
        if ckpt_due:
            self.save()
        if (work_due or ckpt_due) and self._progress is not None:
            self._progress.clock.exclude(time.perf_counter() - t0)  # the ETA counts training steps only

    def _write_log(self) -> None:
        c, st = self.cfg, self.state
        losses = self.window.values(self.dist, st.step)
        skipped = self.window.skipped()
        self.window.clear()
        self.last_loss = sum(losses) / len(losses)
        then, step_then = self._mark
        now = time.perf_counter()
        record = {
            "step": st.step,
            "epoch": st.epoch,
            "loss": round(self.last_loss, 6),
            "lr": lr_at(st.step - 1, c.lr, self.warmup, self.total, c.lr_decay),
            "img_per_s": round((st.step - step_then) * c.batch_size / max(now - then, 1e-9), 2),
            "time": round(time.time(), 3),
        }
        if skipped is not None:  # fp16: steps the loss scaler skipped (overflowed gradients) since the last log
            record["skipped_steps"] = skipped
        self._mark = (now, st.step)
        self.history.append(record)
        if self.log_file is not None:
            self.log_file.write(record)
        if self._progress is not None:
            self._progress.logged(record)

    # ------------------------------------------------------------------ outputs

    def save(self, report: bool = True) -> Path:
        """Write a checkpoint (rank 0; every rank waits for it), then the run's report.html.
        Raises NonFinite instead of saving a non-finite loss or weights: the previous checkpoint
        stays the latest. Returns its folder."""
        st, c = self.state, self.cfg
        self.window.values(self.dist, st.step)
        if not _all_finite(st.model.parameters()):
            raise NonFinite(f"the weights are not finite after step {st.step}")
        if self.dist.is_main:
            st.save(self.run_dir.checkpoints, world_size=self.dist.world_size, keep=c.keep_checkpoints,
                    keep_full=c.keep_full)
            if report:
                self._report()
        self.dist.barrier()
        return self.run_dir.checkpoints / step_dir_name(st.step)

    def _report(self) -> None:
        """RUN/report.html, on the main rank; a failure is said once and never stops training."""
        if not (self.cfg.report and self.dist.is_main):
            return
        try:
            write_report(self.run_dir.path)
        except Exception as e:  # the report is a view of the run: it must never cost the run
            if not self._report_failed:
                self.log(f"note: report.html not written ({type(e).__name__}: {e}); training goes on")
            self._report_failed = True

    def _sync(self) -> None:
        """Wait for the device's queued work (CUDA runs ahead of the host), for timing."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _close_progress(self) -> None:
        if self._progress is not None:
            self._progress.close()

    def _main_log(self, message: str) -> None:
        if self.dist.is_main:
            self.log(message)


def _all_finite(params: Iterable[Tensor]) -> bool:
    """One host sync for all tensors."""
    return bool(torch.stack([torch.isfinite(p).all() for p in params]).all())
