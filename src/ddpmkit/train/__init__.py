"""Training: `train(settings)` runs a whole training; the pieces live in their own modules.

    launch.py    train(), build_trainer(): validation and set-up, the lock's place
    trainer.py   Trainer: the loop, logs, checkpoints at their steps
    state.py     TrainState: what a checkpoint holds; saves and loads itself
    periodic.py  preview grids, FID, stop signals
    progress.py  the plan line, the measured ETA, the progress bar or plain lines
    plan.py      which preset a bare `ddpmkit train` takes; a preset fitted to another size
    budget.py    a length fitted to train.time_budget: the arithmetic (no torch)
    trial.py     the trial steps and jobs timed (then undone) to fit that length
    optim.py     optimizer and learning-rate schedule
    data.py      the training images (generated, or the prepared cache)
    ema.py, rundir.py
"""

from ddpmkit.train.launch import build_trainer, train
from ddpmkit.train.state import TrainState
from ddpmkit.train.trainer import Trainer, TrainResult

__all__ = ["Trainer", "TrainResult", "TrainState", "build_trainer", "train"]
