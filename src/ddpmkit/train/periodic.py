"""Work between training steps: EMA preview grids, FID, stop signals (progress: `progress.py`).

Each piece takes the values it uses (the EMA model, a sampler config, paths), not the settings;
`launch.py` builds them. Grids and FID run on the main rank only.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor, nn

from ddpmkit.fid.colour import compare, summary
from ddpmkit.generate import Denoiser, generate
from ddpmkit.images import make_grid_image, save_grid, to_uint8
from ddpmkit.samplers import make_sampler
from ddpmkit.sampling_network import SamplingNetwork, sampling_batch
from ddpmkit.settings import SampleConfig
from ddpmkit.train.rundir import JsonlLogger, TensorBoard

Shape = tuple[int, int, int]


def ema_images(denoiser: Denoiser, cfg: SampleConfig, n: int, shape: Shape, *, seed: int) -> Tensor:
    """n samples (n, C, H, W) in [-1, 1] from the denoiser's network (eval mode while sampling)
    with the sampler `cfg` describes."""
    model = denoiser.model
    was_training = model.training
    model.eval()
    try:
        sampler = make_sampler(denoiser.sched, cfg)
        batches = generate(denoiser.eps(), sampler, n, shape,
                           seed=seed, batch_size=sampling_batch(model, cfg.batch_size, n, shape), device=denoiser.device)
        return torch.cat(list(batches))
    finally:
        model.train(was_training)


@dataclass
class PreviewGrids:
    """An EMA sample grid per call, `out_dir/step_N.png`, always from the same noise (seed), so
    the grids of a run differ only by the model. DDIM with η = 0: fast and deterministic."""

    denoiser: Denoiser  # the run's EMA network, schedule and prediction
    cfg: SampleConfig  # a copy of the run's sample settings, made DDIM by `make`
    shape: Shape
    n: int
    seed: int
    out_dir: Path
    tensorboard: Optional[TensorBoard] = None

    @classmethod
    def make(cls, denoiser: Denoiser, sample: SampleConfig, **kw: Any) -> "PreviewGrids":
        cfg = sample.model_copy(update={"sampler": "ddim", "steps": min(50, denoiser.sched.T), "eta": 0.0})
        return cls(denoiser, cfg, **kw)

    def __call__(self, ema_model: nn.Module, step: int) -> Path:
        x = ema_images(self.denoiser.with_model(ema_model), self.cfg, self.n, self.shape, seed=self.seed).cpu()
        if self.tensorboard is not None:
            self.tensorboard.image("samples", make_grid_image(x), step)
        return save_grid(x, self.out_dir / f"step_{step:08d}.png")

    def describe(self) -> str:
        return f"{self.n} EMA images, {self.cfg.sampler} {self.cfg.steps} steps"


@dataclass
class FidProbe:
    """FID (and KID) of `n` EMA samples (fixed seed 0, a fast sampler), written beside the loss."""

    monitor: Callable[[Iterable[Tensor]], float]  # uint8 batches -> FID against the reference
    denoiser: Denoiser  # the run's EMA network, schedule and prediction
    cfg: SampleConfig  # sampler and steps of the probe
    n: int
    shape: Shape
    log_file: JsonlLogger
    log: Callable[[str], None]

    def __call__(self, ema_model: nn.Module, step: int) -> float:
        x = ema_images(self.denoiser.with_model(ema_model), self.cfg, self.n, self.shape, seed=0)
        value = self.monitor(to_uint8(b) for b in x.split(50))
        name = f"{self.cfg.sampler}{self.cfg.steps}"
        record: dict[str, Any] = {"step": step, "fid": round(value, 4), "fid_n": self.n, "fid_sampler": name}
        line = f"step {step}: FID {value:.2f} ({self.n} samples, {self.cfg.sampler} {self.cfg.steps} steps)"
        # a FidMonitor also measured the samples' KID and colours (any other callable just gives the FID)
        kid = getattr(self.monitor, "last_kid", None)
        if kid is not None:
            record["kid"] = kid.as_dict()
            line += f"; KID {kid.describe()} (x10^3)"
        colour, ref_colour = getattr(self.monitor, "last_colour", None), getattr(self.monitor, "reference_colour", None)
        if colour is not None:
            record["colour"] = compare(colour, ref_colour)
            line += f"; {summary(colour, ref_colour)}"
        self.log_file.write(record)
        self.log(line)
        return value


@dataclass
class Periodic:
    """What runs every so many steps besides checkpoints. The intervals are known on every rank
    (so all ranks agree when work is due); the jobs exist on the main rank only (None elsewhere)."""

    preview_every: int = 0
    fid_every: int = 0
    preview: Optional[PreviewGrids] = None
    fid: Optional[FidProbe] = None
    fast: Optional[SamplingNetwork] = None  # the EMA network as sampling runs it (a copy, refreshed per use)

    def due(self, step: int) -> bool:
        return _every(step, self.preview_every) or _every(step, self.fid_every)

    def run(self, ema_model: nn.Module, step: int) -> None:
        ema_model = self._sampling(ema_model)
        if self.preview is not None and _every(step, self.preview_every):
            self.preview(ema_model, step)
        if self.fid is not None and _every(step, self.fid_every):
            self.fid(ema_model, step)

    def final_preview(self, ema_model: nn.Module, step: int, log: Callable[[str], None]) -> Optional[Path]:
        """The last grid of a run whose length is not a multiple of the preview interval; it can
        take minutes on a CPU, so it says what it is doing."""
        if self.preview is None or not self.preview_every or _every(step, self.preview_every):
            return None
        log(f"final preview grid: sampling {self.preview.describe()}...")
        path = self.preview(self._sampling(ema_model), step)
        log(f"wrote {path}")
        return path


    def _sampling(self, ema_model: nn.Module) -> nn.Module:
        return self.fast.refresh() if self.fast is not None else ema_model


def _every(step: int, n: int) -> bool:
    return n > 0 and step % n == 0


class StopSignals:
    """While active, the first SIGINT/SIGTERM calls `request_stop` (finish the step, save, return);
    a second one aborts at once (KeyboardInterrupt). Handlers are restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, request_stop: Callable[[], None], announce: Callable[[str], None]) -> None:
        self.request_stop = request_stop
        self.announce = announce
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.request_stop()
        self.announce("stopping after this step and saving a checkpoint (again to abort)")

    def __enter__(self) -> "StopSignals":
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
