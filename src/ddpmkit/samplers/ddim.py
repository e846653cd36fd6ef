"""DDIM sampling (Song et al. 2021, eq. 12): the non-Markovian reverse process, η from 0 to 1.

    x_{t-1} = √ᾱ_{t-1} x̂_0 + √(1 - ᾱ_{t-1} - σ_t²) ε̂ + σ_t z,
    σ_t(η)  = η √((1-ᾱ_{t-1})/(1-ᾱ_t)) √(1 - ᾱ_t/ᾱ_{t-1})              (eq. 16)

Here "t-1" is the next visited training index, and after the last one ᾱ = 1: the final step
returns x̂_0 itself (diffusers' `set_alpha_to_one=True`). η = 0 is deterministic (an ODE
solver); η = 1 on all T steps is DDPM with σ² = β̃.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ddpmkit.samplers.base import Sampler, StepOutput
from ddpmkit.schedule import NoiseSchedule


class DDIMSampler(Sampler):
    name = "ddim"
    default_steps = 50

    def __init__(self, sched: NoiseSchedule, spacing: str = "uniform", eta: float = 0.0, clip_x0: bool = True) -> None:
        super().__init__(sched, spacing)
        self.eta = float(eta)
        self.clip_x0 = bool(clip_x0)

    @classmethod
    def from_config(cls, sched: NoiseSchedule, cfg) -> "DDIMSampler":  # cfg: settings.SampleConfig
        return cls(sched, cfg.spacing, cfg.eta, cfg.clip_x0)

    def _alpha_bar(self, i: int) -> float:
        """ᾱ at position i of the visited steps; 1 past the last one (the clean image)."""
        if i >= len(self.timesteps):
            return 1.0
        return float(self.sched.alphas_cumprod[self.timesteps[i]])

    def step(self, eps: Tensor, i: int, x: Tensor, generator: torch.Generator | None = None) -> StepOutput:
        """x: (B, C, H, W) at timesteps[i]; eps: ε_θ(x, t) of the same shape."""
        a_t, a_prev = self._alpha_bar(i), self._alpha_bar(i + 1)

        x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5  # x̂_0, eq. 9 inverted
        if self.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
            # keep ε̂ consistent with the clipped x̂_0 (as improved-diffusion's ddim_sample does)
            eps = (x - a_t**0.5 * x0) / (1 - a_t) ** 0.5

        sigma = self.eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
        direction = max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps  # "direction pointing to x_t"
        prev = a_prev**0.5 * x0 + direction
        if self.eta > 0:
            # drawn at every step, the last included, so the random stream does not depend on σ
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            prev = prev + sigma * z
        return StepOutput(prev_sample=prev, pred_x0=x0)
