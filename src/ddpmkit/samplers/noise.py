"""Where sampling noise comes from: one generator for a batch, or one per image.

Per image (EDM's per-image seeds): image i of seed s draws its x_T and every later noise from its
own generator, seeded from (s, i) by numpy's SeedSequence (child i of s). So the image does not
depend on the batch size, on n, or on which process or device draws the others, and two
different seeds share no image (s + i would: seed 1's image 0 would be seed 0's image 1).

The per-image generators are CPU generators, and the noise is moved to the device: CUDA and CPU
generators give different numbers, so drawing on the CPU makes image i of seed s the same noise
on every device (the images then agree up to the network's arithmetic). The price is a host
draw and a copy per stochastic step, small next to a network call.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor


def image_seed(seed: int, index: int) -> int:
    """The 63-bit seed of image `index` of `seed`: SeedSequence(seed, spawn_key=(index,)).

    Negative seeds are taken modulo 2^64 (SeedSequence wants non-negative entropy)."""
    seq = np.random.SeedSequence(int(seed) % 2**64, spawn_key=(int(index),))
    return int(seq.generate_state(1, np.uint64)[0]) >> 1


class PerImageNoise:
    """Gaussian noise for a batch of images, row b from image (first + b)'s own CPU generator.

    seed: the run's seed; first: the index of the batch's first image among all n; count: the
    batch size; device: where the noise is returned.
    """

    def __init__(self, seed: int, first: int, count: int, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.generators = [torch.Generator().manual_seed(image_seed(seed, first + b)) for b in range(count)]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        """(B, ...) standard normal on the device; shape[0] must be the batch size."""
        if shape[0] != len(self.generators):
            raise ValueError(f"noise for {shape[0]} images asked of a batch of {len(self.generators)}")
        rows = [torch.randn(tuple(shape[1:]), generator=g, dtype=dtype) for g in self.generators]
        return torch.stack(rows).to(self.device)


# a sampler's source of randomness: None (the global RNG), a torch generator (on the device the
# noise is drawn on), or per-image generators
Noise = Optional[Union[torch.Generator, PerImageNoise]]


def randn(
    shape: Sequence[int], generator: Noise, device: torch.device | str, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Standard normal noise of `shape` on `device` from any `Noise` source."""
    if isinstance(generator, PerImageNoise):
        out = generator.randn(shape, dtype)
        return out if out.device == torch.device(device) else out.to(device)
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
