"""DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): a second-order multistep ODE solver.

It integrates the probability-flow ODE in the data-prediction form, in λ_t = log(α_t/σ_t) with
α_t = √ᾱ_t and σ_t = √(1-ᾱ_t). With x̂_0 = (x_t - σ_t ε_θ)/α_t the data prediction at step i
and h_i = λ_{t_i} - λ_{t_{i-1}}, one step from s = t_{i-1} to t = t_i is

    first order (= DDIM, η = 0):   x_t = (σ_t/σ_s) x_s - α_t (e^{-h} - 1) x̂_0(s)
    second order:                  D   = (1 + 1/(2r)) x̂_0(s) - 1/(2r) x̂_0(s'),  r = h_{i-1}/h_i
                                   x_t = (σ_t/σ_s) x_s - α_t (e^{-h} - 1) D

The first step has no history, so it is first order. The last step goes to ᾱ = 1 (σ = 0,
λ = ∞): first order there gives exactly x̂_0, which is diffusers' `final_sigmas_type="zero"`
(it also forces `lower_order_final`). Good at 10–25 steps.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ddpmkit.samplers.base import Sampler, StepOutput
from ddpmkit.schedule import NoiseSchedule


class DPMSolverPPSampler(Sampler):
    name = "dpmsolver++"
    default_steps = 50  # settings: "None = T for ddpm, 50 otherwise"; 10–25 is usually enough

    def __init__(self, sched: NoiseSchedule, spacing: str = "uniform", clip_x0: bool = True) -> None:
        super().__init__(sched, spacing)
        self.clip_x0 = bool(clip_x0)
        self._prev_x0: Optional[Tensor] = None  # x̂_0 from the previous step (the multistep memory)

    @classmethod
    def from_config(cls, sched: NoiseSchedule, cfg) -> "DPMSolverPPSampler":  # cfg: settings.SampleConfig
        return cls(sched, cfg.spacing, cfg.clip_x0)

    def _on_set_timesteps(self) -> None:
        self._prev_x0 = None

    def _alpha_sigma_lambda(self, i: int) -> tuple[float, float, float]:
        """(α, σ, λ) at position i of the visited steps."""
        a_bar = float(self.sched.alphas_cumprod[self.timesteps[i]])
        alpha, sigma = math.sqrt(a_bar), math.sqrt(1.0 - a_bar)
        return alpha, sigma, math.log(alpha / sigma)

    def step(self, eps: Tensor, i: int, x: Tensor, generator: torch.Generator | None = None) -> StepOutput:
        """x: (B, C, H, W) at timesteps[i]; eps: ε_θ(x, t). Deterministic: generator is unused."""
        if i == 0:
            self._prev_x0 = None  # a new trajectory: forget the last one's history
        alpha_s, sigma_s, lambda_s = self._alpha_sigma_lambda(i)
        x0 = (x - sigma_s * eps) / alpha_s  # data prediction x̂_0
        if self.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)

        last = i == len(self.timesteps) - 1
        if last:
            prev = x0  # σ = 0 at the end: the first-order step lands exactly on x̂_0
        else:
            alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(i + 1)
            h = lambda_t - lambda_s
            D = x0 if self._prev_x0 is None else self._second_order_D(x0, h, i, lambda_s)
            prev = (sigma_t / sigma_s) * x - alpha_t * math.expm1(-h) * D
        self._prev_x0 = x0
        return StepOutput(prev_sample=prev, pred_x0=x0)

    def _second_order_D(self, x0: Tensor, h: float, i: int, lambda_s: float) -> Tensor:
        """D = x̂_0(s) + (x̂_0(s) - x̂_0(s'))/(2r), the linear extrapolation of x̂_0 in λ."""
        assert self._prev_x0 is not None
        _, _, lambda_prev = self._alpha_sigma_lambda(i - 1)
        r = (lambda_s - lambda_prev) / h
        return x0 + (x0 - self._prev_x0) / (2.0 * r)
