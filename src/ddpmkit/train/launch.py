"""From settings to a running Trainer: `train(settings)` is the one entry point that takes them whole.

    train(settings)
      build_trainer   validate everything, then build device, data, model, state, periodic work;
                      nothing is written to the run directory yet, so a failed start leaves none
      [run-directory lock]
      Trainer.open    refuse to clobber a run; load the checkpoint to resume; fit the length to
                      train.time_budget (train/trial.py); create the run
      Trainer.run     the loop
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
from torch import nn

from ddpmkit.compiling import Compiled, decide_compile
from ddpmkit.data.loader import ArrayLike, ImageBatches
from ddpmkit.device import DistInfo, dist_from_env
from ddpmkit.errors import DdpmkitError
from ddpmkit.fid import FidExtractor, FidMonitor, default_reference
from ddpmkit.generate import Denoiser
from ddpmkit.nn import count_parameters
from ddpmkit.precision import resolve_precision
from ddpmkit.progress import Mode
from ddpmkit.sampling_network import SamplingNetwork
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.settings import SampleConfig, Settings, TrainConfig
from ddpmkit.train.budget import Every, budgeted, length_rule
from ddpmkit.train.data import describe_data, load_training_images, training_attributes
from ddpmkit.train.guard import RunGuard
from ddpmkit.train.periodic import FidProbe, Periodic, PreviewGrids
from ddpmkit.train.plan import cpu_alternative
from ddpmkit.train.progress import Plan
from ddpmkit.train.rundir import TENSORBOARD_MISSING, JsonlLogger, RunDir, TensorBoard
from ddpmkit.train.state import TrainState
from ddpmkit.train.trainer import Log, Trainer, TrainResult
from ddpmkit.train.trial import TimedLength

OnStep = Callable[[Trainer], None]


def train(
    settings: Settings,
    *,
    resume: bool = False,
    log: Log = print,
    progress: Mode | bool = "auto",
    dist: Optional[DistInfo] = None,
    on_step: Iterable[OnStep] = (),
    why: str = "",
    replan: bool = False,
    started: Optional[float] = None,
) -> TrainResult:
    """Train `settings` into settings.train.run_dir (or continue it: resume=True).

    Under torchrun this joins the process group, and leaves it at the end if it joined it.
    `on_step` callbacks see the Trainer after every step (they may call `request_stop()`).
    progress: "auto" (a bar in a terminal, a plain line per log when piped), "bar", "lines",
    or "off" (True = auto, False = off). `why`: why this preset, for the plan line.
    A run with train.time_budget (and no step count) fits its length to the budget, counted from
    `started` (a time.monotonic(); default now); a resume keeps that length unless `replan`.
    """
    started = time.monotonic() if started is None else started
    dist = dist or dist_from_env()
    was_joined = dist.joined()
    try:
        trainer = build_trainer(settings, dist=dist, log=log, progress=progress, on_step=on_step, why=why,
                                replan=replan, started=started)
        # ── RUN-DIRECTORY LOCK (issue 12) ─────────────────────────────────────────────────────
        # The one place to take it: everything is validated, and nothing in the run directory has
        # been read or written yet. Take it on the main rank around open() and run() (open() reads
        # the run's state and creates it) and release it when run() returns or raises. Under DDP
        # the other ranks must learn of a refusal: agree on it with `dist.any_rank(refused)`
        # before raising, or they wait forever in open()'s barrier. (train/guard.py)
        run_lock = RunGuard(trainer, log)
        with run_lock:
            trainer.open(resume)
            run_lock.opened(resume)
            return trainer.run()
    finally:
        if not was_joined:
            dist.leave()


def build_trainer(
    settings: Settings,
    *,
    dist: Optional[DistInfo] = None,
    log: Log = print,
    progress: Mode | bool = "auto",
    on_step: Iterable[OnStep] = (),
    why: str = "",
    replan: bool = False,
    started: Optional[float] = None,
) -> Trainer:
    """Validate `settings` and build every piece of the run. Joins the process group under
    torchrun; reads (or prepares) the data; writes nothing to the run directory."""
    started = time.monotonic() if started is None else started
    dist = dist or dist_from_env()
    s, tc = settings, settings.train
    main_log: Log = log if dist.is_main else _silent
    check_settings(s, dist.world_size)
    if rule := length_rule(tc):
        main_log(rule)
    if replan and not budgeted(tc):
        raise DdpmkitError("--replan fits the rest of a run to its time budget: give --time (train.time_budget) "
                           "and no --max-steps or --epochs")
    device = dist.device(tc.device)
    dist.join(device)
    images, data_info = _training_images(s, dist, main_log)
    s, attributes = conditioning(s, data_info, main_log)
    batches = ImageBatches(images, tc.batch_size // dist.world_size, device=device, hflip=s.data.hflip,
                           seed=tc.seed, rank=dist.rank, world_size=dist.world_size, labels=attributes)
    total = total_steps(tc, len(batches))
    state = TrainState.new(s, device, dist.rank)
    sched = NoiseSchedule.from_config(s.diffusion).to(device)
    run_dir = RunDir(tc.run_dir)
    tb = _tensorboard(tc.tensorboard, run_dir, main_log) if dist.is_main else None
    log_file = JsonlLogger(run_dir.log, tb) if dist.is_main else None
    periodic = _periodic(s, sched, state.ema.model, device, run_dir, log_file, main_log, dist.is_main, tb)
    if dist.is_main and (periodic.preview or periodic.fid) and _fast_sampling(s.sample, device):
        periodic.fast = SamplingNetwork(state.ema.model, device, s.sample, log=main_log, copy_weights=True)
    params = count_parameters(state.model)
    device_name = f"{device} x{dist.world_size} processes" if dist.enabled else str(device)
    precision, compiling = resolve_precision(tc.precision, device), decide_compile(tc.compile, device.type)
    plan = Plan(s.preset, why, params, describe_data(data_info, s.data.split), tc.batch_size, 0, total,
                total / max(1, len(batches)), device_name,
                cpu_alternative(s.preset, s.data.dataset),
                speed=speed_line(precision.describe(), compiling.describe(), tc, dist.world_size))
    run_info = {"device": str(device), "parameters": params, "world_size": dist.world_size,
                "total_steps": total, "preset_choice": why, "precision": precision.name,
                "compile": compiling.on, **data_info}
    fit = TimedLength(tc.time_budget, started, Every(tc.ckpt_every, tc.sample_every, s.fid.every), replan,
                      main_log) if budgeted(tc) and tc.time_budget else None
    net, ddp = _network(state.model, device, dist, compiling.on, main_log)
    return Trainer(state, batches, sched, tc, net=net, ddp=ddp, total=total,
                   run_dir=run_dir, run_info=run_info, plan=plan, dist=dist, periodic=periodic,
                   log_file=log_file, progress=progress, log=log, on_step=on_step, fix_length=fit)


def speed_line(precision: str, compiling: str, tc: TrainConfig, world_size: int) -> str:
    """The plan line's part on how the steps run: precision, compile, micro-batches when accumulating."""
    parts = [f"precision {precision}", compiling]
    if tc.grad_accum > 1:
        micro = tc.batch_size // (world_size * tc.grad_accum)
        per = f" per process x {world_size} processes" if world_size > 1 else ""
        parts.append(f"micro-batch {micro} x {tc.grad_accum} accumulated{per} = effective batch {tc.batch_size}")
    return " · ".join(parts)


def check_settings(settings: Settings, world_size: int) -> None:
    """What can be refused before any data is read: one line each."""
    tc = settings.train
    settings.check_model()
    if tc.max_steps is None and tc.epochs is None and tc.time_budget is None:
        raise DdpmkitError("set how long to train: --time 30m, --epochs N or --max-steps N "
                           "(train.time_budget / train.epochs / train.max_steps)")
    if tc.batch_size % world_size:
        raise DdpmkitError(f"train.batch_size {tc.batch_size} is not divisible by the {world_size} processes")
    if tc.batch_size % (world_size * tc.grad_accum):
        raise DdpmkitError(f"train.batch_size {tc.batch_size} is not divisible into {tc.grad_accum} micro-batches "
                           f"(train.grad_accum) on each of {world_size} processes")
    if tc.condition == "none" and settings.model.cond_dim:
        raise DdpmkitError(f"model.cond_dim {settings.model.cond_dim} without a condition: train with "
                           "--condition attributes (train.condition), which sets model.cond_dim from the data")


def conditioning(settings: Settings, info: dict[str, Any], log: Log) -> tuple[Settings, Optional[np.ndarray]]:
    """train.condition=attributes: the settings with model.cond_dim and model.cond_names taken from
    the data, and the (N, K) int8 attributes; says how many images have no attribute row (they
    train unconditionally). Unconditional: the settings unchanged and None."""
    if settings.train.condition == "none":
        return settings, None
    attributes, names = training_attributes(settings.data, info)
    asked = settings.model.cond_dim
    if asked and asked != len(names):
        raise DdpmkitError(f"model.cond_dim {asked} differs from the data's {len(names)} attributes; leave it unset")
    model = settings.model.model_copy(update={"cond_dim": len(names), "cond_names": tuple(names)})
    settings = settings.model_copy(update={"model": model})
    missing = int((attributes == 0).all(axis=1).sum())
    log(f"conditioning on {len(names)} attributes (p_uncond {settings.train.p_uncond:g}); {missing:,} of "
        f"{len(attributes):,} images have no attribute row and train unconditionally (null embedding)")
    return settings, attributes


def check_data(images: ArrayLike, settings: Settings) -> None:
    """The data fit the model and give at least one global batch."""
    n, channels = int(images.shape[0]), int(images.shape[1])
    if channels != settings.model.in_channels:
        raise DdpmkitError(
            f"model.in_channels is {settings.model.in_channels} but the training images have {channels} channels"
        )
    if n < settings.train.batch_size:
        raise DdpmkitError(
            f"dataset has {n} images, fewer than one batch of {settings.train.batch_size}; lower train.batch_size"
        )


def total_steps(cfg: TrainConfig, batches_per_epoch: int) -> int:
    """The run's length in steps: the smaller of train.max_steps and train.epochs' worth; 0 for
    a run fitted to train.time_budget (its length is fixed before its first step)."""
    limits = [cfg.max_steps] if cfg.max_steps is not None else []
    if cfg.epochs is not None:
        limits.append(cfg.epochs * batches_per_epoch)
    return min(limits, default=0)


def _training_images(settings: Settings, dist: DistInfo, log: Log) -> tuple[ArrayLike, dict[str, Any]]:
    """Load and check the data. One process per machine prepares a missing cache; the others
    wait for it and then find it ready."""
    if dist.local_rank != 0:
        dist.barrier()
    images, info = load_training_images(settings.data, log)
    if dist.local_rank == 0:
        dist.barrier()
    check_data(images, settings)
    return images, info


def _network(model: nn.Module, device: torch.device, dist: DistInfo, compile: bool,
             log: Log) -> tuple[nn.Module | Compiled, Optional[nn.parallel.DistributedDataParallel]]:
    """(the model as the loop calls it: DDP-wrapped under torchrun, compiled when `compile`, the DDP
    wrapper or None)."""
    ddp = None
    if dist.enabled:
        ids = [device.index] if device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    net = ddp or model
    return (Compiled(net, what="the training network", log=log) if compile else net), ddp


def _periodic(
    s: Settings,
    sched: NoiseSchedule,
    ema_model: nn.Module,
    device: torch.device,
    run_dir: RunDir,
    log_file: Optional[JsonlLogger],
    log: Log,
    is_main: bool,
    tb: Optional[TensorBoard] = None,
) -> Periodic:
    """Preview grids and FID of the EMA network (the jobs on the main rank only; the intervals on all)."""
    tc, f = s.train, s.fid
    periodic = Periodic(preview_every=tc.sample_every, fid_every=f.every)
    if not is_main:
        return periodic
    shape = (s.model.in_channels, s.data.size, s.data.size)
    denoiser = Denoiser(ema_model, sched, s.diffusion.prediction, device, tc.precision)
    if tc.sample_every:
        periodic.preview = PreviewGrids.make(denoiser, s.sample, shape=shape, n=tc.num_samples, seed=tc.seed,
                                             out_dir=run_dir.samples, tensorboard=tb)
    if f.every and log_file is not None:
        cfg = s.sample.model_copy(update={"sampler": f.every_sampler, "steps": f.every_steps})
        periodic.fid = FidProbe(_fid_monitor(s, device), denoiser, cfg, f.every_n, shape, log_file=log_file, log=log)
    return periodic


def _fast_sampling(cfg: SampleConfig, device: torch.device) -> bool:
    """Whether previews and the FID monitor gain from a sampling copy of the EMA network (another
    dtype, or compiled); in fp32 eager they sample from the EMA network itself."""
    return resolve_precision(cfg.precision, device).mixed or decide_compile(cfg.compile, device.type).on


def _fid_monitor(settings: Settings, device: torch.device) -> Callable[..., float]:
    """The FID reference of the training data (its statistics cached under data.cache_dir/fid)."""
    f = settings.fid
    extractor = FidExtractor(f.weights, device, f.batch_size, f.verify_weights)
    reference = default_reference(settings.data, f.ref_split or settings.data.split, f.ref_n)
    return FidMonitor.for_reference(reference, extractor, f.every_n, Path(settings.data.cache_dir) / "fid")


def _tensorboard(wanted: bool, run_dir: RunDir, log: Log) -> Optional[TensorBoard]:
    """RUN/tb when train.tensorboard is on; without the package, say so (once) and go on."""
    if not wanted:
        return None
    if not TensorBoard.available():
        log(TENSORBOARD_MISSING)
        return None
    return TensorBoard(run_dir.path / "tb")


def _silent(message: str) -> None:
    pass

