"""Spherical interpolation of initial noise (Shoemake 1985; used on x_T by DDIM, Song et al. 2021, §5.3).

Two draws z_0, z_1 ~ N(0, I) in d dimensions both have norm ≈ √d and are nearly orthogonal. The
straight line between them passes closer to the origin: at λ = 1/2 its norm is ≈ √(d/2), a point
x_T ~ N(0, I) almost never is, and the network decodes it to a washed-out grey face. The great
circle keeps the norm (exactly when |z_0| = |z_1|), so every frame starts from plausible noise:

    slerp(z_0, z_1; λ) = sin((1-λ)θ)/sin θ · z_0 + sin(λθ)/sin θ · z_1,   cos θ = z_0·z_1 / (|z_0| |z_1|)
"""

from __future__ import annotations

import torch
from torch import Tensor

# below this angle (radians) sin θ loses precision and the arc is a straight line anyway
PARALLEL = 1e-4


def slerp(z0: Tensor, z1: Tensor, lam: Tensor | float) -> Tensor:
    """Spherical interpolation, image by image.

    z0, z1: (B, ...) of the same shape; each row is one vector (one image's noise). lam: a number
    or (B,), 0 gives z0 and 1 gives z1 (exactly). Nearly parallel rows fall back to the straight
    line. Computed in float32 (float64 for float64 input: MPS has no float64); returns z0's shape
    and dtype, on its device.
    """
    if z0.shape != z1.shape:
        raise ValueError(f"slerp needs two tensors of one shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    work = torch.float64 if z0.dtype == torch.float64 else torch.float32
    a, b = z0.reshape(z0.shape[0], -1).to(work), z1.reshape(z1.shape[0], -1).to(work)
    lam_t = torch.as_tensor(lam, dtype=work).to(a.device).reshape(-1, 1)
    cos = (a * b).sum(1, keepdim=True) / (a.norm(dim=1, keepdim=True) * b.norm(dim=1, keepdim=True))
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    sin = torch.sin(theta)
    arc = sin > PARALLEL
    safe = torch.where(arc, sin, torch.ones_like(sin))
    w0 = torch.where(arc, torch.sin((1 - lam_t) * theta) / safe, 1 - lam_t)
    w1 = torch.where(arc, torch.sin(lam_t * theta) / safe, lam_t)
    return (w0 * a + w1 * b).reshape(z0.shape).to(z0.dtype)


def slerp_path(z0: Tensor, z1: Tensor, frames: int) -> Tensor:
    """`frames` points evenly spaced in angle from z0 to z1, both included.

    z0, z1: (1, C, H, W) or (C, H, W); returns (frames, C, H, W) in z0's dtype, on its device.
    """
    if frames < 2:
        raise ValueError(f"an interpolation needs at least 2 frames, got {frames}")
    z0, z1 = (z if z.ndim == 4 else z.unsqueeze(0) for z in (z0, z1))
    lam = torch.linspace(0.0, 1.0, frames)
    return slerp(z0.expand(frames, -1, -1, -1), z1.expand(frames, -1, -1, -1), lam)
