"""From a network to images: wrap it as ε(x_t, t), run a sampler over batches of noise."""

from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch import Tensor, nn

from ddpmkit.device import autocast
from ddpmkit.diffusion import EpsModel, Prediction, eps_from_output
from ddpmkit.samplers import PerImageNoise, Sampler, StepCallback, sample
from ddpmkit.samplers.guidance import guided_eps
from ddpmkit.schedule import NoiseSchedule


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
