"""From a network to images: open a run as a network ready to sample (`load_run` -> `Denoiser`),
wrap it as ε(x_t, t), run a sampler over batches of noise.

    run = load_run("runs/demo", device)            # network, settings, step, schedule
    eps = run.denoiser.eps()                       # ε(x_t, t) for every sampler (a v-network too)
    for x in generate(eps, make_sampler(run.sched, cfg), 16, run.shape, seed=0, batch_size=16, device=device): ...
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor, nn

from ddpmkit.checkpoint import load_model
from ddpmkit.device import autocast
from ddpmkit.diffusion import EpsModel, Prediction, eps_from_output
from ddpmkit.samplers import PerImageNoise, Sampler, StepCallback, sample
from ddpmkit.samplers.guidance import guided_eps
from ddpmkit.sampling_network import SamplingNetwork, sampling_batch
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.settings import SampleConfig, Settings


def eps_fn(
    model: nn.Module,
    device: torch.device,
    precision: str = "auto",
    *,
    prediction: Prediction,
    sched: NoiseSchedule,
    cond: Optional[Tensor] = None,
    guidance: float = 1.0,
) -> EpsModel:
    """Wrap the network as eps(x_t, t) in float32, with bf16 autocast on CUDA.

    prediction (the run's `diffusion.prediction`, required so no caller can forget a v-network):
    the output is turned into ε with the training schedule `sched`, so every sampler sees an ε-model.

    cond: (K,) attribute condition for a conditional network (None: its null embedding, i.e.
    unconditional), guided with weight `guidance` (samplers/guidance.py: 0 unconditional,
    1 conditional, > 1 stronger)."""

    def cond_eps(x: Tensor, t: Tensor, c: Optional[Tensor] = None, drop: Optional[Tensor] = None) -> Tensor:
        with autocast(device, precision):
            out = (model(x, t) if c is None else model(x, t, c, drop)).float()
        return eps_from_output(sched, x.float(), t, out, prediction)

    return cond_eps if cond is None else guided_eps(cond_eps, cond, guidance)


def generate(
    eps_model: EpsModel,
    sampler: Sampler,
    n: int,
    shape: tuple[int, int, int],
    *,
    seed: int,
    batch_size: int,
    device: torch.device,
    callback: Optional[StepCallback] = None,
    first: int = 0,
) -> Iterator[Tensor]:
    """Yield n images in batches: (b, C, H, W) in [-1, 1], clamped. shape = (C, H, W).

    Image i (counted from `first`, so a run can be split into parts) draws all its noise from its
    own generator seeded from (seed, i) (`samplers.noise`): it is the same image whatever n,
    batch_size or device, for every sampler. `callback(i, t, x, x0)` sees every step of the
    first batch (i = -1: x_T before the first step, x0 None).
    """
    done = 0
    while done < n:
        b = min(batch_size, n - done)
        noise = PerImageNoise(seed, first + done, b, device)
        x = sample(eps_model, sampler, (b, *shape), generator=noise, device=device,
                   callback=callback if done == 0 else None)
        yield x.clamp(-1, 1)
        done += b


@dataclass(frozen=True)
class Denoiser:
    """A network ready to sample: its schedule, what it predicts (ε or v) and where it runs.
    `eps()` is the ε-model every sampler takes; nothing below this asks a caller for `prediction`."""

    model: nn.Module
    sched: NoiseSchedule  # on `device`
    prediction: Prediction
    device: torch.device
    precision: str = "auto"

    def eps(self, cond: Optional[Tensor] = None, guidance: float = 1.0) -> EpsModel:
        """ε(x_t, t); with `cond` (K,) attributes, classifier-free guided with weight `guidance`."""
        return eps_fn(self.model, self.device, self.precision, prediction=self.prediction, sched=self.sched,
                      cond=cond, guidance=guidance)

    def with_model(self, model: nn.Module) -> "Denoiser":
        """The same denoiser around another network of the run (e.g. the EMA copy as it is now)."""
        return replace(self, model=model)

    @classmethod
    def for_settings(cls, model: nn.Module, settings: Settings, device: torch.device,
                     precision: str = "auto") -> "Denoiser":
        """`model`, trained with `settings`, ready to sample on `device`."""
        sched = NoiseSchedule.from_config(settings.diffusion).to(device)
        return cls(model, sched, settings.diffusion.prediction, device, precision)


@dataclass(frozen=True)
class OpenRun:
    """A run (or checkpoint, or weights file) opened for sampling."""

    path: Path  # as given: run folder, checkpoint folder or .safetensors file
    settings: Settings
    step: int  # the training step of the weights
    denoiser: Denoiser

    @property
    def model(self) -> nn.Module:
        return self.denoiser.model

    @property
    def sched(self) -> NoiseSchedule:
        return self.denoiser.sched

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        size = self.settings.data.size
        return (self.settings.model.in_channels, size, size)

    @property
    def label(self) -> str:
        """RUNNAME-stepN: the start of every output folder's default name."""
        return f"{self.path.resolve().name}-step{self.step}"

    def for_sampling(self, cfg: SampleConfig, log: Callable[[str], None] = print) -> "OpenRun":
        """The same run with its network as sampling runs it fastest (`sampling_network`: cast once
        to the sampling dtype, channels_last on CUDA, compiled per cfg.compile)."""
        net = SamplingNetwork(self.model, self.denoiser.device, cfg, log=log)
        return replace(self, denoiser=self.denoiser.with_model(net))

    def batch_size(self, asked: Optional[int], n: int, calls: int = 1) -> int:
        """The batch for n images: `asked`, else what the device holds (`sampling_network`).
        calls: network images per image (2 with classifier-free guidance)."""
        if isinstance(self.model, SamplingNetwork):
            return self.model.batch_size(asked, n, self.shape, calls)
        return sampling_batch(self.model, asked, n, self.shape)


def load_run(path: Path, device: torch.device, *, ema: bool = True, fallback_settings: Optional[Settings] = None,
             precision: str = "auto") -> OpenRun:
    """Open a run folder, checkpoint folder or .safetensors file for sampling: its network (EMA
    weights unless ema=False) in eval mode on `device`, its settings (a foreign weights file takes
    `fallback_settings`), step and schedule. One-line errors for what does not fit."""
    model, settings, step = load_model(path, device, use_ema=ema, fallback_settings=fallback_settings)
    return OpenRun(Path(path), settings, step, Denoiser.for_settings(model, settings, device, precision))
