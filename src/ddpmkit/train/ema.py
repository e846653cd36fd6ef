"""Moving averages of the weights, the copy DDPM samples from.

exponential: DDPM's (decay 0.9999). power: the power-function EMA of Karras et al. (2024,
"Analyzing and Improving the Training Dynamics of Diffusion Models", EDM2 §3.1), whose length
grows with the run, given by its relative width σ_rel.
"""

from __future__ import annotations

import copy
from typing import Literal

import numpy as np
import torch
from torch import nn

EmaKind = Literal["exponential", "power"]


def power_gamma(std: float) -> float:
    """The exponent γ of the power-function EMA whose averaging profile has relative standard
    deviation σ_rel = `std` (EDM2 eq. 3): σ_rel² = (γ+1)/((γ+2)²(γ+3)), i.e. the largest real
    root of γ³ + 7γ² + (16 - σ_rel⁻²)γ + (12 - σ_rel⁻²) = 0. 0.10 -> γ ≈ 6.94, 0.05 -> 16.97.
    Requires 0 < std < 1/√12 (γ > 0)."""
    if not 0 < std < 12**-0.5:
        raise ValueError(f"ema_std must be in (0, {12**-0.5:.4f}), got {std}")
    s2 = std**-2
    roots = np.roots([1.0, 7.0, 16.0 - s2, 12.0 - s2])
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


class EMA:
    """θ_ema ← d·θ_ema + (1-d)·θ after every optimizer step.

    exponential: d = decay; with warmup, d = min(decay, (1+n)/(10+n)) after n updates, so a short
    run's EMA is not stuck near the random initialisation (a 0.9999 average needs ~10k steps to
    forget it). power: d = (1 - 1/t)^(γ+1) at the t-th update (t = n + 1), γ = power_gamma(std),
    so θ_ema after t updates weighs θ_τ by (τ^(γ+1) - (τ-1)^(γ+1))/t^(γ+1) ∝ τ^γ. Both depend
    only on `num_updates`, which checkpoints keep: a resumed run averages as the uninterrupted one.
    """

    def __init__(
        self, model: nn.Module, decay: float = 0.9999, warmup: bool = True, kind: EmaKind = "exponential",
        std: float = 0.10,
    ) -> None:
        if kind not in ("exponential", "power"):
            raise ValueError(f"unknown EMA kind {kind!r}; choose exponential or power")
        self.decay, self.warmup, self.kind = decay, warmup, kind
        self.gamma = power_gamma(std) if kind == "power" else None
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        # torch.compile wrappers and DDP are not copied: callers pass the bare module

    def current_decay(self) -> float:
        """d of the next update."""
        n = self.num_updates
        if self.gamma is not None:
            return (1.0 - 1.0 / (n + 1)) ** (self.gamma + 1.0)
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        # one fused kernel over all tensors instead of one launch per parameter
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)
        self.num_updates += 1
