"""The sampling loop shared by every sampler: x_T ~ N(0, I), then N sampler steps."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from ddpmkit.diffusion import EpsModel
from ddpmkit.samplers.base import Sampler
from ddpmkit.samplers.noise import Noise, randn

# called with (i, t, x, pred_x0): first (-1, t_first, x_T, None), then after each step i
StepCallback = Callable[[int, int, Tensor, Optional[Tensor]], None]


@torch.no_grad()
def sample(
    eps_model: EpsModel,
    sampler: Sampler,
    shape: tuple[int, ...],
    *,
    generator: Noise = None,
    device: torch.device | str = "cpu",
    x_T: Optional[Tensor] = None,
    callback: Optional[StepCallback] = None,
) -> Tensor:
    """Draw samples: returns x_0 of `shape`, (B, C, H, W), roughly in [-1, 1] (not clamped).

    generator: a torch generator on `device`, or `PerImageNoise` (x_T and every later noise drawn
    image by image). The same seed gives the same images on the same device; with PerImageNoise,
    on every device, whatever the batch. x_T: the start instead of a draw (float32 unless given).
    """
    if len(sampler.timesteps) == 0:
        sampler.set_timesteps()
    x = randn(shape, generator, device) if x_T is None else x_T.to(device)
    if callback is not None:
        callback(-1, int(sampler.timesteps[0]), x, None)
    state = sampler.new_state()  # this run's own history: the sampler object stays shareable
    for i, t in enumerate(sampler.timesteps.tolist()):
        tt = torch.full((shape[0],), t, device=x.device, dtype=torch.long)
        eps = eps_model(x, tt).to(x.dtype)
        out = sampler.step(eps, i, x, generator, state)
        x = out.prev_sample
        if callback is not None:
            callback(i, t, x, out.pred_x0)
    return x
