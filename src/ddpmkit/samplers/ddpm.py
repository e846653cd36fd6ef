"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), on all T steps or a respaced subset.

With N < T steps, the visited ᾱ define a shorter Markov chain, β'_i = 1 - ᾱ_{t_i}/ᾱ_{t_{i-1}}
(Nichol & Dhariwal 2021, §4), and Algorithm 2 runs on that chain.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ddpmkit.diffusion import p_sample_step
from ddpmkit.samplers.base import Sampler, StepOutput
from ddpmkit.schedule import NoiseSchedule


class DDPMSampler(Sampler):
    name = "ddpm"

    def __init__(
        self,
        sched: NoiseSchedule,
        spacing: str = "uniform",
        variance: str = "fixed_small",
        clip_x0: bool = True,
    ) -> None:
        super().__init__(sched, spacing)
        self.default_steps = sched.T
        self.variance = variance
        self.clip_x0 = clip_x0
        self.respaced = sched

    @classmethod
    def from_config(cls, sched: NoiseSchedule, cfg) -> "DDPMSampler":
        return cls(sched, cfg.spacing, cfg.variance, cfg.clip_x0)

    def _on_set_timesteps(self) -> None:
        increasing = self.timesteps.flip(0)
        self.respaced = NoiseSchedule.from_alphas_cumprod(self.sched.alphas_cumprod[increasing])

    def step(self, eps: Tensor, i: int, x: Tensor, generator: torch.Generator | None = None) -> StepOutput:
        # position i in decreasing timesteps is index len-1-i of the respaced chain
        j = torch.full((x.shape[0],), len(self.timesteps) - 1 - i, device=x.device, dtype=torch.long)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        prev, x0 = p_sample_step(self.respaced, x, j, eps, noise, self.variance, self.clip_x0)
        return StepOutput(prev_sample=prev, pred_x0=x0)
