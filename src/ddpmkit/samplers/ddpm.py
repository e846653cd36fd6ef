"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), on all T steps or a respaced subset.

With N < T steps, the visited ᾱ define a shorter Markov chain, β'_i = 1 - ᾱ_{t_i}/ᾱ_{t_{i-1}}
(Nichol & Dhariwal 2021, §4), and Algorithm 2 runs on that chain.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ddpmkit.diffusion import X0Mode, p_sample_step
from ddpmkit.samplers.base import Sampler, StepOutput
from ddpmkit.samplers.noise import Noise, randn
from ddpmkit.schedule import NoiseSchedule


class DDPMSampler(Sampler):
    """x0: see `diffusion.x0_and_eps`; the posterior mean uses x̂_0 alone, so clip = clip_eps."""

    name = "ddpm"
    default_steps = None  # all T (Algorithm 2)
    default_spacing = "trailing"  # at T steps every spacing is all steps; measured for fewer

    def __init__(
        self,
        sched: NoiseSchedule,
        spacing: str | None = None,
        variance: str = "fixed_small",
        x0: X0Mode | bool | None = None,
    ) -> None:
        super().__init__(sched, spacing, x0)
        self.variance = variance
        self.respaced = sched

    @classmethod
    def from_config(cls, sched: NoiseSchedule, cfg) -> "DDPMSampler":  # cfg: settings.SampleConfig
        return cls(sched, cfg.spacing, cfg.variance, cfg.x0)

    def _on_set_timesteps(self) -> None:
        increasing = self.timesteps.flip(0).to(self.sched.device)
        self.respaced = NoiseSchedule.from_alphas_cumprod(self.sched.alphas_cumprod[increasing])

    def step(self, eps: Tensor, i: int, x: Tensor, generator: Noise = None, state: Any = None) -> StepOutput:
        """x: (B, C, H, W) at timesteps[i]; eps: ε_θ(x, t). Draws one noise tensor per step but the last."""
        # position i in decreasing timesteps is index len-1-i of the respaced chain
        j = len(self.timesteps) - 1 - i
        jj = torch.full((x.shape[0],), j, device=x.device, dtype=torch.long)
        # the last step (j = 0) adds no noise, so it draws none
        noise = randn(x.shape, generator, x.device, x.dtype) if j > 0 else torch.zeros_like(x)
        prev, x0 = p_sample_step(self.respaced, x, jj, eps, noise, self.variance, x0_mode=self.x0)
        return StepOutput(prev_sample=prev, pred_x0=x0)
