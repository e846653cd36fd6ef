"""The training loop: L_simple with Adam, warm-up, clipping, EMA, checkpoints, samples, logs.

One process or many under torchrun (DistributedDataParallel). `train.batch_size` is the global
batch; each of W processes takes batch_size/W images of every global batch. The timesteps and
noise of a global batch come from one generator that every rank advances identically, so W
processes follow the same trajectory as one process with the same global batch.
"""

from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from ddpmkit import __version__
from ddpmkit.device import DistInfo, autocast, dist_from_env, resolve_device
from ddpmkit.diffusion import training_loss
from ddpmkit.errors import DdpmkitError
from ddpmkit.generate import eps_fn, generate
from ddpmkit.images import save_grid, to_uint8
from ddpmkit.samplers import make_sampler
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.settings import Settings, settings_from_dict
from ddpmkit.checkpoint import (
    EMA_FILE,
    MODEL_FILE,
    load_state,
    load_weights,
    save_checkpoint,
)
from ddpmkit.train.ema import EMA
from ddpmkit.train.rundir import JsonlLogger, RunDir


@dataclass
class TrainResult:
    step: int
    epoch: int
    run_dir: Path
    last_loss: float
    interrupted: bool
    checkpoint: Optional[Path]
    history: list[dict[str, Any]] = field(default_factory=list)


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int = 0, decay: str = "constant") -> float:
    """Linear warm-up from 0 over warmup_steps, then constant (DDPM's schedule) or a cosine
    decay to 0 at total_steps (short runs end with the weights settled, not mid-oscillation)."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if decay == "cosine" and total_steps > warmup_steps:
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr


def build_optimizer(params, cfg, device: torch.device) -> torch.optim.Optimizer:
    kwargs: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if device.type == "cuda":
        kwargs["fused"] = True  # one kernel for all parameters
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, **kwargs)


def _same_architecture(a: Settings, b: Settings) -> Optional[str]:
    """The first model/diffusion setting that differs, as 'section.key (x vs y)', or None."""
    for section in ("model", "diffusion"):
        da, db = getattr(a, section).model_dump(), getattr(b, section).model_dump()
        for k in da:
            if da[k] != db.get(k):
                return f"{section}.{k} ({db.get(k)} in the run, {da[k]} asked)"
    return None


class Trainer:
    """Trains `settings` into `settings.train.run_dir`. Call `run()`; `request_stop()` from anywhere."""

    def __init__(
        self,
        settings: Settings,
        *,
        resume: bool = False,
        log: Callable[[str], None] = print,
        progress: bool = True,
        dist: Optional[DistInfo] = None,
    ) -> None:
        self.settings = settings
        self.resume = resume
        self.log = log
        self.show_progress = progress
        self.dist = dist or dist_from_env()
        self.on_step: list[Callable[["Trainer"], None]] = []
        self._stop = False
        self._agreed_stop = False  # under DDP all ranks must stop at the same step
        self.step = 0
        self.total = 0  # set by run(); the cosine learning-rate decay ends there
        self.epoch = 0
        self.batch_in_epoch = 0  # global batches already taken from the current epoch

    # ------------------------------------------------------------------ set-up

    def request_stop(self) -> None:
        """Finish the current step, save a checkpoint and return (what Ctrl-C and SIGTERM do)."""
        self._stop = True

    def _should_stop(self) -> bool:
        return self._agreed_stop if self.dist.enabled else self._stop

    def _setup(self) -> None:
        s, d = self.settings, self.dist
        tc = s.train
        s.check_model()  # before anything is written
        self.device = resolve_device(tc.device)
        if self.device.type == "cuda" and d.enabled:
            self.device = torch.device("cuda", d.local_rank)
            torch.cuda.set_device(self.device)
        self.owns_process_group = False
        if d.enabled and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.owns_process_group = True
        if tc.batch_size % d.world_size:
            raise DdpmkitError(
                f"train.batch_size {tc.batch_size} is not divisible by the {d.world_size} processes"
            )
        self.local_batch = tc.batch_size // d.world_size

        self.run_dir = RunDir(tc.run_dir)
        ckpt = self._check_run_dir()
        self._barrier()  # every rank has looked before rank 0 creates the run

        torch.manual_seed(tc.seed)  # identical initial weights on every rank
        from ddpmkit.data.loader import ImageBatches, load_training_images
        from ddpmkit.nn import UNet, count_parameters

        # one process per machine prepares a missing cache; the others then find it ready
        if d.local_rank != 0:
            self._barrier()
        images, data_info = load_training_images(s.data)
        if d.local_rank == 0:
            self._barrier()
        self.batches = ImageBatches(
            images,
            self.local_batch,
            device=self.device,
            hflip=s.data.hflip,
            seed=tc.seed,
            rank=d.rank,
            world_size=d.world_size,
        )
        if len(self.batches) == 0:
            raise DdpmkitError(
                f"dataset has {len(images)} images, fewer than one batch of {tc.batch_size}; lower train.batch_size"
            )
        self.model: nn.Module = UNet.from_config(s.model).to(self.device)
        if self.device.type == "cuda" and tc.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.n_params = count_parameters(self.model)
        self.ema = EMA(self.model, tc.ema_decay, tc.ema_warmup)
        self.opt = build_optimizer(self.model.parameters(), tc, self.device)
        self.sched = NoiseSchedule.from_config(s.diffusion).to(self.device)
        # one stream of timesteps and noise for the global batch, identical on every rank
        self.gen = torch.Generator(device=self.device).manual_seed(tc.seed + 1)
        torch.manual_seed(tc.seed + 7919 * d.rank)  # dropout masks differ between ranks

        if ckpt is not None:
            self._load(ckpt)
        elif d.is_main:
            self.run_dir.create(
                s,
                {"device": str(self.device), "parameters": self.n_params, "world_size": d.world_size, **data_info},
            )
        self.net: nn.Module = self.model
        if d.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if tc.compile:
            self.net = torch.compile(self.net)
        self.log_file = JsonlLogger(self.run_dir.log, tc.tensorboard) if d.is_main else None
        self.fid_monitor = None
        if s.fid.every and d.is_main:
            from ddpmkit.fid import FidExtractor, FidMonitor, default_reference

            f = s.fid
            extractor = FidExtractor(f.weights, self.device, f.batch_size, f.verify_weights)
            reference = default_reference(s.data, f.ref_split or s.data.split, f.ref_n)
            self.fid_monitor = FidMonitor.for_reference(reference, extractor, f.every_n, Path(s.data.cache_dir) / "fid")
        if d.is_main:
            self.log(
                f"training {self.n_params / 1e6:.2f}M parameters on {self.device}"
                f"{f' x{d.world_size} processes' if d.enabled else ''}, {len(images)} images, "
                f"global batch {tc.batch_size}, run directory {self.run_dir.path}"
            )
        self._barrier()

    def _check_run_dir(self) -> Optional[Path]:
        """The checkpoint to resume from, or None for a new run; refuses to clobber a run."""
        run = self.run_dir
        if not self.resume:
            if run.holds_run():
                latest = run.latest()
                what = f"checkpoint {latest.name}" if latest else "a run"
                raise DdpmkitError(
                    f"run directory {run.path} already holds {what}; use --resume to continue it "
                    "or --run-dir to start a new one"
                )
            return None
        if not run.holds_run():
            raise DdpmkitError(f"nothing to resume: {run.path} holds no run")
        return run.latest()

    def _load(self, ckpt: Path) -> None:
        state = load_state(ckpt)
        saved = settings_from_dict(json.loads(state["settings"]), str(ckpt))
        diff = _same_architecture(self.settings, saved)
        if diff is not None:
            raise DdpmkitError(f"cannot resume {ckpt}: it was trained with different {diff}")
        if saved.train.batch_size != self.settings.train.batch_size:
            self.log("note: global batch size changed on resume; the data order restarts at the epoch's start")
        load_weights(self.model, ckpt / MODEL_FILE)
        load_weights(self.ema.model, ckpt / EMA_FILE)
        self.ema.num_updates = int(state["ema_updates"])
        self.opt.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        same_batch = saved.train.batch_size == self.settings.train.batch_size
        self.batch_in_epoch = int(state["batch_in_epoch"]) if same_batch else 0
        torch.set_rng_state(state["rng_cpu"])
        if self.device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        gen_state = state["rng_gen"]
        self.gen.set_state(gen_state)
        if self.dist.rank != 0:  # the saved CPU state is rank 0's: other ranks need their own dropout masks
            torch.manual_seed(self.settings.train.seed + 7919 * self.dist.rank + self.step)
        if self.dist.is_main:
            self.log(f"resuming {self.run_dir.path} from step {self.step} (epoch {self.epoch})")

    # ------------------------------------------------------------------ the loop

    def total_steps(self) -> int:
        tc = self.settings.train
        limits = []
        if tc.max_steps is not None:
            limits.append(tc.max_steps)
        if tc.epochs is not None:
            limits.append(tc.epochs * len(self.batches))
        if not limits:
            raise DdpmkitError("set how long to train: --epochs N or --max-steps N (train.epochs / train.max_steps)")
        return min(limits)

    def train_step(self, x0: torch.Tensor) -> torch.Tensor:
        """One optimizer step on this rank's slice of a global batch. x0: (b, 3, H, W) in [-1, 1]."""
        tc, d = self.settings.train, self.dist
        B = tc.batch_size
        t_all = torch.randint(0, self.sched.T, (B,), generator=self.gen, device=self.device)
        noise_all = torch.randn((B, *x0.shape[1:]), generator=self.gen, device=self.device)
        lo = d.rank * self.local_batch
        t, noise = t_all[lo : lo + self.local_batch], noise_all[lo : lo + self.local_batch]
        if self.device.type == "cuda" and tc.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
            noise = noise.contiguous(memory_format=torch.channels_last)
        lr = lr_at(self.step, tc.lr, tc.warmup_steps, self.total, tc.lr_decay)
        for g in self.opt.param_groups:
            g["lr"] = lr
        with autocast(self.device, tc.precision):
            loss = training_loss(self.net, self.sched, x0, t, noise)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.opt.step()
        self.ema.update(self.model)
        return loss.detach()

    def run(self) -> TrainResult:
        self._setup()
        tc = self.settings.train
        total = self.total = self.total_steps()
        history: list[dict[str, Any]] = []
        last_loss = math.nan
        ckpt: Optional[Path] = None
        previous = self._install_signal_handlers()
        progress = self._progress(total)
        try:
            loss_sum = torch.zeros((), device=self.device)
            n_sum, t_mark, step_mark = 0, time.perf_counter(), self.step
            while self.step < total and not self._should_stop():
                for x0 in self.batches.epoch(self.epoch, start_batch=self.batch_in_epoch):
                    loss_sum += self.train_step(x0)
                    n_sum += 1
                    self.step += 1
                    self.batch_in_epoch += 1
                    for cb in self.on_step:
                        cb(self)
                    if self.step % tc.log_every == 0 or self.step == total:
                        loss_sum = self._all_mean(loss_sum)
                        last_loss = loss_sum.item() / n_sum
                        dt = time.perf_counter() - t_mark
                        rec = {
                            "step": self.step,
                            "epoch": self.epoch,
                            "loss": round(last_loss, 6),
                            "lr": lr_at(self.step - 1, tc.lr, tc.warmup_steps, total, tc.lr_decay),
                            "img_per_s": round((self.step - step_mark) * tc.batch_size / max(dt, 1e-9), 2),
                            "time": round(time.time(), 3),
                        }
                        history.append(rec)
                        if self.log_file is not None:
                            self.log_file.write(rec)
                        loss_sum = torch.zeros((), device=self.device)
                        n_sum, t_mark, step_mark = 0, time.perf_counter(), self.step
                        self._agreed_stop = self._any_rank(self._stop)
                    if progress is not None:
                        progress.update(self._task, completed=self.step, loss=last_loss)
                    if tc.sample_every and self.step % tc.sample_every == 0:
                        self.sample_grid()
                    if self.settings.fid.every and self.step % self.settings.fid.every == 0:
                        self.log_fid()
                    if tc.ckpt_every and self.step % tc.ckpt_every == 0 and self.step < total:
                        ckpt = self.save()
                    if self.step >= total or self._should_stop():
                        break
                else:  # the epoch ran out
                    self.epoch += 1
                    self.batch_in_epoch = 0
            ckpt = self.save()
            if tc.sample_every and self.step % tc.sample_every != 0 and not self._stop:
                self.sample_grid()
        finally:
            if progress is not None:
                progress.stop()
            self._restore_signal_handlers(previous)
            if getattr(self, "log_file", None) is not None:
                self.log_file.close()
        if self._stop and self.dist.is_main:
            self.log(f"stopped at step {self.step}; checkpoint saved; continue with --resume")
        return TrainResult(self.step, self.epoch, self.run_dir.path, last_loss, self._stop, ckpt, history)

    # ------------------------------------------------------------------ outputs

    def save(self) -> Optional[Path]:
        """Write a checkpoint (rank 0); every rank waits for it."""
        path = None
        if self.dist.is_main:
            state = {
                "ddpmkit": __version__,
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "world_size": self.dist.world_size,
                "ema_updates": self.ema.num_updates,
                "optimizer": self.opt.state_dict(),
                "rng_cpu": torch.get_rng_state(),
                "rng_gen": self.gen.get_state(),
                "settings": json.dumps(self.settings.model_dump(mode="json")),
            }
            if self.device.type == "cuda":
                state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
            path = save_checkpoint(
                self.run_dir.checkpoints,
                model=self.model,
                ema_model=self.ema.model,
                state=state,
                settings=self.settings,
                step=self.step,
                keep=self.settings.train.keep_checkpoints,
            )
        self._barrier()
        return path

    def _ema_images(self, cfg, n: int, seed: int) -> torch.Tensor:
        """n EMA samples (n, C, H, W) in [-1, 1] with the sampler that `cfg` describes."""
        s = self.settings
        was_training = self.ema.model.training
        self.ema.model.eval()
        sampler = make_sampler(self.sched, cfg)
        shape = (s.model.in_channels, s.data.size, s.data.size)
        x = torch.cat(list(generate(eps_fn(self.ema.model, self.device, s.train.precision), sampler, n, shape,
                                    seed=seed, batch_size=min(n, s.sample.batch_size), device=self.device)))
        self.ema.model.train(was_training)
        return x

    def sample_grid(self) -> Optional[Path]:
        """An EMA sample grid with a fixed seed, so grids compare across steps (rank 0).

        DDIM with 50 steps (η = 0): fast, and deterministic, so the grids differ only by the model."""
        if not self.dist.is_main:
            return None
        s = self.settings
        cfg = s.sample.model_copy(update={"sampler": "ddim", "steps": min(50, s.diffusion.timesteps), "eta": 0.0})
        path = self.run_dir.samples / f"step_{self.step:08d}.png"
        save_grid(self._ema_images(cfg, s.train.num_samples, s.train.seed).cpu(), path)
        return path

    def log_fid(self) -> Optional[float]:
        """FID of fid.every_n EMA samples (fixed seed, fast sampler), logged beside the loss (rank 0)."""
        if self.fid_monitor is None:
            return None
        f = self.settings.fid
        cfg = self.settings.sample.model_copy(update={"sampler": f.every_sampler, "steps": f.every_steps})
        value = self.fid_monitor(to_uint8(x) for x in self._ema_images(cfg, f.every_n, 0).split(50))
        if self.log_file is not None:
            self.log_file.write({"step": self.step, "fid": round(value, 4), "fid_n": f.every_n,
                                 "fid_sampler": f"{f.every_sampler}{f.every_steps}"})
        self.log(f"step {self.step}: FID {value:.2f} ({f.every_n} samples, {f.every_sampler} {f.every_steps} steps)")
        return value

    # ------------------------------------------------------------------ plumbing

    def _progress(self, total: int):
        if not (self.show_progress and self.dist.is_main):
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        p = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeRemainingColumn(),
            transient=False,
        )
        self._task = p.add_task("train", total=total, completed=self.step, loss=math.nan)
        p.start()
        return p

    def _install_signal_handlers(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}

        def handler(signum, frame):  # first signal: stop cleanly; second: abort now
            if self._stop:
                raise KeyboardInterrupt
            self._stop = True
            if self.dist.is_main:
                self.log("stopping after this step and saving a checkpoint (again to abort)")

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for sig, h in previous.items():
            signal.signal(sig, h)

    def _barrier(self) -> None:
        if self.dist.enabled and torch.distributed.is_initialized():
            torch.distributed.barrier()

    def _all_mean(self, x: torch.Tensor) -> torch.Tensor:
        if self.dist.enabled:
            x = x.clone()
            torch.distributed.all_reduce(x)
            x /= self.dist.world_size
        return x

    def _any_rank(self, flag: bool) -> bool:
        if not self.dist.enabled:
            return flag
        f = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(f, op=torch.distributed.ReduceOp.MAX)
        return bool(f.item() > 0)


def train(settings: Settings, *, resume: bool = False, log: Callable[[str], None] = print, progress: bool = True) -> TrainResult:
    """Run a Trainer to the end; under torchrun, also close the process group it opened."""
    trainer = Trainer(settings, resume=resume, log=log, progress=progress)
    try:
        return trainer.run()
    finally:
        if getattr(trainer, "owns_process_group", False) and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
