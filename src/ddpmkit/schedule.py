"""The noise schedule β_t and the quantities derived from it (Ho et al. 2020, eqs. 4, 6, 7).

Index convention: arrays are indexed by t = 0..T-1, where index t holds the paper's step t+1.
So `betas[0]` is β_1 and `alphas_cumprod[t]` is ᾱ_{t+1} = Π_{s<=t+1} α_s. Every quantity is
computed in float64 on the device of the β it is built from (float32 on MPS, which lacks
float64); `extract` casts to the working dtype only at the point of use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM's linear schedule: β_t evenly spaced from beta_start to beta_end. (T,) float64."""
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal (2021) eq. 17: ᾱ_t = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2).

    β_t = 1 - ᾱ_t/ᾱ_{t-1}, clipped at max_beta to avoid the singularity at t = T. (T,) float64.
    """
    t = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


@dataclass(frozen=True)
class NoiseSchedule:
    """β_t and everything the forward process and posterior need, as (T,) float64 tensors."""

    betas: Tensor  # β_t
    alphas: Tensor  # α_t = 1 - β_t
    alphas_cumprod: Tensor  # ᾱ_t
    alphas_cumprod_prev: Tensor  # ᾱ_{t-1}, with ᾱ_0 = 1
    sqrt_alphas_cumprod: Tensor  # √ᾱ_t
    sqrt_one_minus_alphas_cumprod: Tensor  # √(1-ᾱ_t)
    sqrt_recip_alphas_cumprod: Tensor  # 1/√ᾱ_t
    sqrt_recipm1_alphas_cumprod: Tensor  # √(1/ᾱ_t - 1)
    posterior_variance: Tensor  # β̃_t = (1-ᾱ_{t-1})/(1-ᾱ_t) β_t   (eq. 7)
    posterior_log_variance_clipped: Tensor  # log β̃_t, with β̃_1 (= 0) replaced by β̃_2
    posterior_mean_coef1: Tensor  # √ᾱ_{t-1} β_t/(1-ᾱ_t)        (coefficient of x_0)
    posterior_mean_coef2: Tensor  # √α_t (1-ᾱ_{t-1})/(1-ᾱ_t)     (coefficient of x_t)

    @classmethod
    def from_betas(cls, betas: Tensor) -> "NoiseSchedule":
        """The schedule of these β_t: (T,) with 0 < β_t < 1, on any device (the tables stay there)."""
        betas = betas.to(_table_dtype(betas.device))
        # a meta tensor has no values to check; every real device is checked (one sync, once)
        if betas.ndim != 1 or not (betas.is_meta or ((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a 1-D tensor with 0 < β_t < 1")
        return cls._derive(betas)

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: Tensor) -> "NoiseSchedule":
        """The schedule whose ᾱ are exactly these, a decreasing (N,) tensor on any device (used to
        respace onto a subset of steps: β'_i = 1 - ᾱ_i/ᾱ_{i-1}, with ᾱ_{-1} = 1)."""
        a = alphas_cumprod.to(_table_dtype(alphas_cumprod.device))
        prev = torch.cat([a.new_ones(1), a[:-1]])
        return cls._derive(1.0 - a / prev)

    @classmethod
    def _derive(cls, betas: Tensor) -> "NoiseSchedule":
        """Every table from β, computed on β's device and in its dtype."""
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([betas.new_ones(1), alphas_cumprod[:-1]])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # β̃_1 = 0: log would be -inf, so the first entry borrows β̃_2 (as in DDPM's code)
        log_var = torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]]))
        if len(betas) == 1:
            log_var = torch.log(betas)
        return cls(
            betas=betas,
            alphas=alphas,
            alphas_cumprod=alphas_cumprod,
            alphas_cumprod_prev=alphas_cumprod_prev,
            sqrt_alphas_cumprod=alphas_cumprod.sqrt(),
            sqrt_one_minus_alphas_cumprod=(1.0 - alphas_cumprod).sqrt(),
            sqrt_recip_alphas_cumprod=(1.0 / alphas_cumprod).sqrt(),
            sqrt_recipm1_alphas_cumprod=(1.0 / alphas_cumprod - 1).sqrt(),
            posterior_variance=posterior_variance,
            posterior_log_variance_clipped=log_var,
            posterior_mean_coef1=betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
            posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod),
        )

    @classmethod
    def from_config(cls, cfg) -> "NoiseSchedule":  # cfg: settings.DiffusionConfig
        if cfg.schedule == "linear":
            return cls.from_betas(linear_betas(cfg.timesteps, cfg.beta_start, cfg.beta_end))
        if cfg.schedule == "cosine":
            return cls.from_betas(cosine_betas(cfg.timesteps))
        raise ValueError(f"unknown schedule {cfg.schedule!r}")

    @property
    def T(self) -> int:
        return len(self.betas)

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def to(self, device: torch.device | str) -> "NoiseSchedule":
        """A copy with every tensor on `device` (float64 kept; MPS, which lacks it, gets float32)."""
        dtype = _table_dtype(torch.device(device))
        return NoiseSchedule(**{f.name: getattr(self, f.name).to(device, dtype) for f in fields(self)})


def _table_dtype(device: torch.device) -> torch.dtype:
    """float64 for the tables, except on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def extract(a: Tensor, t: Tensor, x: Tensor) -> Tensor:
    """Gather a[t] for a batch of timesteps and shape it to broadcast against x.

    a: (T,); t: (B,) long; x: (B, ...). Returns (B, 1, ..., 1) in x's dtype and device.
    """
    out = a.to(x.device)[t.to(x.device)]
    return out.to(x.dtype).reshape(t.shape[0], *([1] * (x.ndim - 1)))
