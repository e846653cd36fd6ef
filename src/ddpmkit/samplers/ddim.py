"""DDIM sampling (Song et al. 2021, eq. 12): the non-Markovian reverse process, η from 0 to 1.

    x_{t-1} = √ᾱ_{t-1} x̂_0 + √(1 - ᾱ_{t-1} - σ_t²) ε̂ + σ_t z,
    σ_t(η)  = η √((1-ᾱ_{t-1})/(1-ᾱ_t)) √(1 - ᾱ_t/ᾱ_{t-1})              (eq. 16)

Here "t-1" is the next visited training index, and after the last one ᾱ = 1: the final step
returns x̂_0 itself (diffusers' `set_alpha_to_one=True`). η = 0 is deterministic (an ODE
solver, first-order DPM-Solver++); η = 1 on all T steps is DDPM with σ² = β̃.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ddpmkit.diffusion import X0Mode, x0_and_eps
from ddpmkit.samplers.base import Sampler, StepOutput
from ddpmkit.samplers.noise import Noise, randn
from ddpmkit.schedule import NoiseSchedule


class DDIMSampler(Sampler):
    """x0: see `diffusion.x0_and_eps`; all four modes differ here (clip_eps is improved-diffusion's)."""

    name = "ddim"
    default_steps = 50
    default_spacing = "trailing"  # measured (benchmarks/results_sampler_accuracy.md)

    def __init__(
        self, sched: NoiseSchedule, spacing: str | None = None, eta: float = 0.0, x0: X0Mode | bool | None = None
    ) -> None:
        super().__init__(sched, spacing, x0)
        self.eta = float(eta)
        # per-step tables, set by set_timesteps: ᾱ (N+1,), σ_t (N,), the coefficient of ε̂ (N,)
        self._a = self._sigma = self._dir = torch.empty(0)

    @classmethod
    def from_config(cls, sched: NoiseSchedule, cfg) -> "DDIMSampler":  # cfg: settings.SampleConfig
        return cls(sched, cfg.spacing, cfg.eta, cfg.x0)

    def _on_set_timesteps(self) -> None:
        a = self._alphas_cumprod()  # ᾱ_{t_0}, ..., ᾱ_{t_{N-1}}, 1
        a_t, a_prev = a[:-1], a[1:]
        sigma = self.eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        self._a, self._sigma = a, sigma
        self._dir = (1 - a_prev - sigma**2).clamp(min=0).sqrt()  # coefficient of ε̂

    def step(self, eps: Tensor, i: int, x: Tensor, generator: Noise = None, state: Any = None) -> StepOutput:
        """x: (B, C, H, W) at timesteps[i]; eps: ε_θ(x, t) of the same shape."""
        x0, eps = x0_and_eps(x, eps, self._a[i], self.x0)
        prev = self._a[i + 1].sqrt() * x0 + self._dir[i] * eps  # ε̂ term: "direction pointing to x_t"
        if self.eta > 0:
            # drawn at every step, the last included, so the random stream does not depend on σ
            prev = prev + self._sigma[i] * randn(x.shape, generator, x.device, x.dtype)
        return StepOutput(prev_sample=prev, pred_x0=x0)
