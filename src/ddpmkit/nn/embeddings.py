"""Sinusoidal timestep embedding (Vaswani et al. 2017, as used by Ho et al. 2020).

The embedding of step t is [sin(t·ω_0), …, sin(t·ω_{h-1}), cos(t·ω_0), …, cos(t·ω_{h-1})] with
h = dim // 2 and ω_i = exp(-log(10000) · i / (h - 1)), i.e. frequencies from 1 down to 1/10000
(DDPM's `get_timestep_embedding`; note the h - 1, not h, in the denominator).

Other U-Nets differ in two small ways, both options here: the halves swapped, [cos, sin]
(`cos_first`, diffusers' flip_sin_to_cos), and the denominator h - shift (`freq_shift`, diffusers'
freq_shift; 1 is DDPM's, 0 diffusers' UNet2DModel default).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_PERIOD = 10_000.0


def timestep_embedding(t: Tensor, dim: int, cos_first: bool = False, freq_shift: float = 1.0) -> Tensor:
    """Embed timestep indices.

    t: (B,) long or float, the 0-based index in [0, T) (fractional values are fine).
    Returns (B, dim) float32 in [-1, 1]; the first dim // 2 columns are sines, the next dim // 2
    cosines (the other way round with cos_first), and an odd dim gets a final zero column.
    freq_shift: ω_i = exp(-log(10000) · i / (dim // 2 - freq_shift)), below dim // 2.
    """
    if dim < 4:
        raise ValueError(f"timestep embedding dim must be >= 4, got {dim}")
    if t.dim() != 1:
        raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}")
    half = dim // 2
    # Computed in float32 every call (no buffer) so model.to(bfloat16) cannot coarsen the
    # frequencies and t·ω stays exact enough for t up to ~1e5.
    i = torch.arange(half, device=t.device, dtype=torch.float32)
    freqs = torch.exp(i * (-math.log(MAX_PERIOD) / (half - freq_shift)))
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    waves = [torch.cos(args), torch.sin(args)] if cos_first else [torch.sin(args), torch.cos(args)]
    emb = torch.cat(waves, dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb
