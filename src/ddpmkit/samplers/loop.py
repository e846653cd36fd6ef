"""The sampling loop shared by every sampler: x_T ~ N(0, I), then N sampler steps."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from ddpmkit.samplers.base import Sampler

EpsModel = Callable[[Tensor, Tensor], Tensor]
# called with (i, t, x, pred_x0): first (-1, t_first, x_T, None), then after each step i
StepCallback = Callable[[int, int, Tensor, Optional[Tensor]], None]


@torch.no_grad()
def sample(
    eps_model: EpsModel,
    sampler: Sampler,
    shape: tuple[int, ...],
    *,
    generator: Optional[torch.Generator] = None,
    device: torch.device | str = "cpu",
    x_T: Optional[Tensor] = None,
    callback: Optional[StepCallback] = None,
) -> Tensor:
    """Draw samples: returns x_0 of `shape`, (B, C, H, W), roughly in [-1, 1] (not clamped).

    The same generator seed gives the same images on the same device.
    """
    if len(sampler.timesteps) == 0:
        sampler.set_timesteps()
    if x_T is None:
        x = torch.randn(shape, generator=generator, device=device)
    else:
        x = x_T.to(device)
    if callback is not None:
        callback(-1, int(sampler.timesteps[0]), x, None)
    for i, t in enumerate(sampler.timesteps.tolist()):
        tt = torch.full((shape[0],), t, device=x.device, dtype=torch.long)
        eps = eps_model(x, tt).to(x.dtype)
        out = sampler.step(eps, i, x, generator)
        x = out.prev_sample
        if callback is not None:
            callback(i, t, x, out.pred_x0)
    return x
