"""From a network to images: wrap it as ε(x_t, t), run a sampler over batches of noise."""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
from torch import Tensor, nn

from ddpmkit.device import autocast
from ddpmkit.samplers import Sampler, StepCallback, sample

EpsModel = Callable[[Tensor, Tensor], Tensor]


def eps_fn(model: nn.Module, device: torch.device, precision: str = "auto") -> EpsModel:
    """Wrap the network as eps(x_t, t) in float32, with bf16 autocast on CUDA."""

    def eps(x: Tensor, t: Tensor) -> Tensor:
        with autocast(device, precision):
            return model(x, t).float()

    return eps


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
) -> Iterator[Tensor]:
    """Yield n images in batches: (b, C, H, W) in [-1, 1], clamped. shape = (C, H, W).

    Batch k uses seed + k, so the first images do not depend on n. `callback(i, t, x, x0)`
    sees every step of the first batch (i = -1: x_T before the first step, x0 None).
    """
    done, k = 0, 0
    while done < n:
        b = min(batch_size, n - done)
        gen = torch.Generator(device=device).manual_seed(seed + k)
        x = sample(eps_model, sampler, (b, *shape), generator=gen, device=device,
                   callback=callback if k == 0 else None)
        yield x.clamp(-1, 1)
        done += b
        k += 1
