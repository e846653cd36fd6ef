"""Data whose diffusion is known in closed form: x_0 ~ N(μ, diag(s²)), element by element.

For such data every quantity a sampler approximates is exact (Gaussian algebra):
- the marginal: x_t ~ N(√ᾱ_t μ, v_t), v_t = ᾱ_t s² + 1 - ᾱ_t;
- the optimal ε-predictor: ε*(x_t, t) = E[ε | x_t] = √(1-ᾱ_t) (x_t - √ᾱ_t μ) / v_t, which is
  what a perfectly trained network converges to;
- the probability-flow ODE map from ᾱ_a to ᾱ_b: the marginals are Gaussian and the flow is
  affine, so it keeps each element's z-score, x_b = √ᾱ_b μ + √(v_b/v_a) (x_a - √ᾱ_a μ).
So a deterministic sampler run with ε* can be compared with the exact map of its own x_T, and a
stochastic one with the exact data distribution. Used by tests/test_gaussian_fixture.py and
benchmarks/bench_sampler_accuracy.py.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ddpmkit.schedule import NoiseSchedule


class GaussianData:
    """x_0 ~ N(μ, s²) element-wise; μ, s: (C, H, W) float64 on the CPU."""

    def __init__(self, sched: NoiseSchedule, mu: Tensor, s: Tensor) -> None:
        self.sched, self.mu, self.s = sched, mu.double(), s.double()

    @classmethod
    def standard(cls, sched: NoiseSchedule, shape: tuple[int, int, int] = (3, 4, 4), seed: int = 0) -> "GaussianData":
        """Means in [-0.5, 0.5] and standard deviations in [0.05, 0.4]: data inside [-1, 1] as
        images are, narrow enough that the ODE bends hard near t = 0 (as real data makes it)."""
        g = torch.Generator().manual_seed(seed)
        mu = torch.rand(shape, generator=g, dtype=torch.float64) - 0.5
        s = 0.05 + 0.35 * torch.rand(shape, generator=g, dtype=torch.float64)
        return cls(sched, mu, s)

    def _alpha_bar(self, t: Tensor, x: Tensor) -> Tensor:
        """ᾱ at training indices t: (B,) -> (B, 1, 1, 1) in x's dtype and device."""
        a = self.sched.alphas_cumprod.to(x.device)[t.to(x.device)]
        return a.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))

    def eps(self, x: Tensor, t: Tensor) -> Tensor:
        """ε*(x_t, t), the exact minimiser of the training loss: an `EpsModel`."""
        a = self._alpha_bar(t, x)
        mu, s2 = self.mu.to(x.device, x.dtype), self.s.to(x.device, x.dtype) ** 2
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s2 + 1 - a)

    def marginal(self, alpha_bar: float) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation of x_t at this ᾱ_t: each (C, H, W)."""
        return alpha_bar**0.5 * self.mu, (alpha_bar * self.s**2 + 1 - alpha_bar).sqrt()

    def ode_map(self, x: Tensor, alpha_bar_from: float, alpha_bar_to: float = 1.0) -> Tensor:
        """The exact probability-flow ODE solution at ᾱ_to of x at ᾱ_from: (B, C, H, W)."""
        m_a, sd_a = self.marginal(alpha_bar_from)
        m_b, sd_b = self.marginal(alpha_bar_to)
        return m_b + sd_b / sd_a * (x - m_a)

    def start_alpha_bar(self, first_t: int) -> float:
        """ᾱ at the sampler's first training index."""
        return float(self.sched.alphas_cumprod[first_t])


def x_T(n: int, shape: tuple[int, int, int], seed: int = 1) -> Tensor:
    """n standard normal starts, float64: (n, C, H, W)."""
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
