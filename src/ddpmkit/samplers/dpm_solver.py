"""DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): a second-order multistep ODE solver.

It integrates the probability-flow ODE in the data-prediction form, in λ_t = log(α_t/σ_t) with
α_t = √ᾱ_t and σ_t = √(1-ᾱ_t). With x̂_0 = (x_t - σ_t ε_θ)/α_t the data prediction at step i
and h_i = λ_{t_i} - λ_{t_{i-1}}, one step from s = t_{i-1} to t = t_i is

    first order (= DDIM, η = 0):   x_t = (σ_t/σ_s) x_s - α_t (e^{-h} - 1) x̂_0(s)
    second order:                  D   = (1 + 1/(2r)) x̂_0(s) - 1/(2r) x̂_0(s'),  r = h_{i-1}/h_i
                                   x_t = (σ_t/σ_s) x_s - α_t (e^{-h} - 1) D

First order where the linear extrapolation of x̂_0 has nothing to stand on:
- the first step (no history);
- the step into t = 0, on grids that visit it (uniform, leading, quadratic): it is several times
  longer in λ than the one before (r ≈ 0.2), and extrapolating x̂_0 that far overshoots (on the
  Gaussian fixture, at 15–25 steps: 1.4–1.6x DDIM's error, 2–2.6x first order's). The official
  DPM-Solver's `lower_order_final` does the same at the end of its grids, which end at t = 0;
  diffusers' DPMSolverMultistepScheduler stays second order there (`first_order_into_zero=False`);
- the last step, to ᾱ = 1 (σ = 0, λ = ∞), which lands exactly on x̂_0: diffusers'
  `final_sigmas_type="zero"`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ddpmkit.diffusion import X0Mode, x0_and_eps
from ddpmkit.samplers.base import Sampler, StepOutput
from ddpmkit.samplers.noise import Noise
from ddpmkit.schedule import NoiseSchedule


@dataclass
class MultistepState:
    """One run's memory: x̂_0 of the previous step (None before the first)."""

    prev_x0: Optional[Tensor] = None


class DPMSolverPPSampler(Sampler):
    """x0: see `diffusion.x0_and_eps`; the update uses x̂_0 alone, so clip = clip_eps (diffusers'
    thresholding with sample_max_value = 1)."""

    name = "dpmsolver++"
    default_steps = 50  # 15–25 are usually enough (benchmarks/results_sampler_accuracy.md)
    default_spacing = "trailing"  # measured; uniform is a little more accurate from 20 steps on

    def __init__(
        self,
        sched: NoiseSchedule,
        spacing: str | None = None,
        x0: X0Mode | bool | None = None,
        first_order_into_zero: bool = True,
    ) -> None:
        super().__init__(sched, spacing, x0)
        self.first_order_into_zero = first_order_into_zero
        # per-step tables, set by set_timesteps (see _on_set_timesteps)
        self._a = self._c_x = self._c_D = self._half_over_r = torch.empty(0)
        self._second_order: list[bool] = []

    @classmethod
    def from_config(cls, sched: NoiseSchedule, cfg) -> "DPMSolverPPSampler":  # cfg: settings.SampleConfig
        return cls(sched, cfg.spacing, cfg.x0)

    def _on_set_timesteps(self) -> None:
        a = self._alphas_cumprod()[:-1]  # ᾱ at the visited steps
        alpha, sigma = a.sqrt(), (1 - a).sqrt()
        lam = torch.log(alpha / sigma)
        h = lam[1:] - lam[:-1]  # h[i]: the step from position i to i+1
        self._a = a
        # x_{i+1} = c_x[i] x_i + c_D[i] D_i, for every step but the last (which lands on x̂_0)
        self._c_x = sigma[1:] / sigma[:-1]
        self._c_D = -alpha[1:] * torch.expm1(-h)
        # 1/(2r) of step i, r = h[i-1]/h[i]; entry 0 is unused (the first step is first order)
        self._half_over_r = torch.cat([h.new_zeros(1), h[1:] / (2 * h[:-1])]) if len(h) else h
        n = len(self.timesteps)
        self._second_order = [0 < i < n - 1 for i in range(n)]
        if self.first_order_into_zero and n >= 2 and int(self.timesteps[-1]) == 0:
            self._second_order[n - 2] = False

    def new_state(self) -> MultistepState:
        return MultistepState()

    def step(
        self, eps: Tensor, i: int, x: Tensor, generator: Noise = None, state: Optional[MultistepState] = None
    ) -> StepOutput:
        """x: (B, C, H, W) at timesteps[i]; eps: ε_θ(x, t); state: this run's `new_state()`.
        Deterministic: generator is unused."""
        if state is None:
            raise ValueError("DPM-Solver++ is multistep: pass this run's state (sampler.new_state())")
        x0, _ = x0_and_eps(x, eps, self._a[i], self.x0)
        if i == len(self.timesteps) - 1:
            prev = x0  # σ = 0 at the end: the first-order step lands exactly on x̂_0
        else:
            D = x0
            if self._second_order[i] and state.prev_x0 is not None:
                D = x0 + self._half_over_r[i] * (x0 - state.prev_x0)  # x̂_0 extrapolated linearly in λ
            prev = self._c_x[i] * x + self._c_D[i] * D
        state.prev_x0 = x0
        return StepOutput(prev_sample=prev, pred_x0=x0)
