"""The guard around a training's use of its run directory (`launch.train` wraps open() and run()).

    with RunGuard(trainer, log) as guard:   # everything validated, nothing read or written yet
        trainer.open(resume)
        guard.opened(resume)
        trainer.run()

- One writer per run directory: the main rank holds `runlock.RunLock` until the run ends. A
  second training or resume on the directory stops with one line naming the holder (PID, host,
  start, command); a lock left by a killed process is taken over with a note. Under torchrun
  every rank learns of a refusal (`DistInfo.any_rank`) before raising, so none waits forever.
- Then what killed writers left in the run directory, checkpoints/ and samples/ is deleted
  (checkpoint temporaries, a checkpoint a killed prune had begun to delete), in one line with
  the count and size.
- After open() on a resume: the run log loses its records past the resumed step (a killed run
  logged steps that are trained again), and a changed run length is said in one line. The
  learning-rate schedule always follows the length asked for now, so resuming a cosine-decay
  run with another --max-steps (or --epochs) re-stretches the decay: the learning rate jumps at
  the resumed step; the note gives its value before and after. A run fitted to a time budget keeps
  the length its run info holds unless --replan fits the rest of it to the budget again.
"""

from __future__ import annotations

from typing import Callable, Optional

from ddpmkit.errors import DdpmkitError
from ddpmkit.io_utils import remove_leftovers
from ddpmkit.runlock import RunLock
from ddpmkit.settings import TrainConfig
from ddpmkit.train.logfile import drop_records_after
from ddpmkit.train.optim import lr_at, warmup_of
from ddpmkit.train.trainer import Trainer

Log = Callable[[str], None]


class RunGuard:
    """The run-directory lock and the clean-ups it makes safe. See the module docstring."""

    def __init__(self, trainer: Trainer, log: Log) -> None:
        self.trainer = trainer
        self.dist = trainer.dist
        self.log: Log = log if self.dist.is_main else _silent
        self.lock: Optional[RunLock] = RunLock(trainer.run_dir.path) if self.dist.is_main else None

    def __enter__(self) -> "RunGuard":
        refusal: Optional[DdpmkitError] = None
        if self.lock is not None:
            try:
                self.lock.acquire()
            except DdpmkitError as e:
                refusal = e
        if self.dist.any_rank(refusal is not None):
            raise refusal or DdpmkitError(
                f"the main process could not lock run directory {self.trainer.run_dir.path} (see its error)"
            )
        try:
            if self.lock is not None:
                if self.lock.note:
                    self.log(self.lock.note)
                self._remove_leftovers()
            self.dist.barrier()  # no rank looks at the checkpoints while they are tidied
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.lock is not None:
            self.lock.release()

    def opened(self, resume: bool) -> None:
        """After Trainer.open: on a resume, drop the log records it repeats and note a new length."""
        if not resume or not self.dist.is_main:
            return
        t = self.trainer
        drop_records_after(t.run_dir.log, t.step)
        note = length_note(t)
        if note:
            self.log(note)

    def _remove_leftovers(self) -> None:
        rd = self.trainer.run_dir
        count = freed = 0
        for folder in (rd.path, rd.checkpoints, rd.samples):
            n, size = remove_leftovers(folder)
            count, freed = count + n, freed + size
        if count:
            what = "temporary" if count == 1 else "temporaries"
            self.log(f"note: removed {count} leftover {what} of killed writes from {rd.path} ({freed / 2**20:.1f} MiB)")


def length_note(trainer: Trainer) -> Optional[str]:
    """One line when a resumed run's length differs from the one its checkpoint was saved with."""
    saved = trainer.state.resumed_from
    if saved is None:
        return None
    # a run fitted to a time budget has no step count in its settings: its run info holds its length
    planned = planned_steps(saved.train, trainer.batches.n) or trainer.planned_before
    if not isinstance(planned, int) or planned == trainer.total:
        return None
    text = f"note: the run was planned for {planned} steps and now goes to {trainer.total}"
    c, was, step = trainer.cfg, saved.train, trainer.step
    if "cosine" in (c.lr_decay, was.lr_decay):
        lr_was = lr_at(step, was.lr, warmup_of(was, planned), planned, was.lr_decay)
        lr_now = lr_at(step, c.lr, trainer.warmup, trainer.total, c.lr_decay)
        text += (f"; the learning-rate decay follows the new length, so the learning rate at step {step} "
                 f"goes from {lr_was:.3g} to {lr_now:.3g}")
    return text


def planned_steps(cfg: TrainConfig, n_images: int) -> int:
    """A run's length as `launch.total_steps` sets it, for settings whose global batch may differ
    from today's: the smaller of max_steps and epochs' worth of full batches of `n_images`."""
    limits = [cfg.max_steps] if cfg.max_steps is not None else []
    if cfg.epochs is not None:
        limits.append(cfg.epochs * (n_images // cfg.batch_size))
    return min(limits) if limits else 0


def _silent(message: str) -> None:
    pass
