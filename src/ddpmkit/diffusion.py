"""The Gaussian diffusion itself: forward process, posterior, reverse step, training loss.

Pure math on tensors and a NoiseSchedule; it knows nothing of the network, which reaches it
only as an ε-prediction `eps: (B, C, H, W)` or as a callable `eps_model(x_t, t) -> eps`.
A network trained to predict v (Salimans & Ho 2022) reaches the samplers through
`eps_from_output`, the one place its output is turned into ε.
Names follow Ho et al. (2020); t is the 0-based index described in `schedule.py`.
"""

from __future__ import annotations

from typing import Callable, Literal, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ddpmkit.schedule import NoiseSchedule, extract

# the network as the math sees it: eps_model(x_t: (B, C, H, W), t: (B,) long) -> ε̂, same shape as x_t
EpsModel = Callable[[Tensor, Tensor], Tensor]
Variance = Literal["fixed_small", "fixed_large"]
# what the network is trained to output: ε (DDPM) or v = √ᾱ_t ε - √(1-ᾱ_t) x_0 (Salimans & Ho 2022)
Prediction = Literal["eps", "v"]
PREDICTIONS: tuple[str, ...] = ("eps", "v")
# how L_simple's per-sample terms are weighted (see `loss_weights`)
LossWeight = Literal["uniform", "min_snr"]
# what a sampler does with x̂_0 (see `x0_and_eps`)
X0Mode = Literal["none", "clip", "clip_eps", "dynamic"]
X0_MODES: tuple[str, ...] = ("none", "clip", "clip_eps", "dynamic")
# ᾱ_t of one step as a number, or as a tensor that broadcasts against x (0-dim or (B, 1, 1, 1))
AlphaBar = Union[float, Tensor]
DYNAMIC_PERCENTILE = 0.995  # Saharia et al. (2022), §2.3


def q_sample(sched: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Sample q(x_t | x_0) = N(√ᾱ_t x_0, (1-ᾱ_t) I) in closed form (eq. 4).

    x0, noise: (B, C, H, W); t: (B,) long in [0, T). Returns x_t, same shape as x0.
    """
    return extract(sched.sqrt_alphas_cumprod, t, x0) * x0 + extract(
        sched.sqrt_one_minus_alphas_cumprod, t, x0
    ) * noise


def q_posterior(sched: NoiseSchedule, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q(x_{t-1} | x_t, x_0) = N(μ̃_t, β̃_t I) (eqs. 6, 7).

    Returns (μ̃_t, β̃_t, log β̃_t clipped), the last two shaped (B, 1, 1, 1).
    """
    mean = extract(sched.posterior_mean_coef1, t, xt) * x0 + extract(sched.posterior_mean_coef2, t, xt) * xt
    var = extract(sched.posterior_variance, t, xt)
    log_var = extract(sched.posterior_log_variance_clipped, t, xt)
    return mean, var, log_var


def predict_x0_from_eps(sched: NoiseSchedule, xt: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """Invert eq. 4 for x_0: x̂_0 = (x_t - √(1-ᾱ_t) ε) / √ᾱ_t."""
    return extract(sched.sqrt_recip_alphas_cumprod, t, xt) * xt - extract(
        sched.sqrt_recipm1_alphas_cumprod, t, xt
    ) * eps


def predict_v(sched: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """The v-prediction target v = √ᾱ_t ε - √(1-ᾱ_t) x_0 (Salimans & Ho 2022, §4).

    x0, noise: (B, C, H, W); t: (B,) long in [0, T). Returns v, same shape as x0.
    """
    return extract(sched.sqrt_alphas_cumprod, t, x0) * noise - extract(
        sched.sqrt_one_minus_alphas_cumprod, t, x0
    ) * x0


def eps_from_v(sched: NoiseSchedule, xt: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """ε = √ᾱ_t v + √(1-ᾱ_t) x_t, exact for x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε (no division: stable at
    every t). xt, v: (B, C, H, W); t: (B,) long. Returns ε, same shape as xt."""
    return extract(sched.sqrt_alphas_cumprod, t, xt) * v + extract(
        sched.sqrt_one_minus_alphas_cumprod, t, xt
    ) * xt


def v_from_eps(sched: NoiseSchedule, xt: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """The inverse of `eps_from_v`: v = (ε - √(1-ᾱ_t) x_t)/√ᾱ_t."""
    return (eps - extract(sched.sqrt_one_minus_alphas_cumprod, t, xt) * xt) / extract(
        sched.sqrt_alphas_cumprod, t, xt
    )


def eps_from_output(sched: NoiseSchedule, xt: Tensor, t: Tensor, out: Tensor, prediction: Prediction) -> Tensor:
    """The ε the network's output `out` stands for: itself for an ε-network, `eps_from_v` for a
    v-network. Every user of a network's output for sampling goes through here."""
    if prediction == "eps":
        return out
    if prediction == "v":
        return eps_from_v(sched, xt, t, out)
    raise ValueError(f"unknown prediction {prediction!r}; choose one of: {', '.join(PREDICTIONS)}")


def x0_from_eps(xt: Tensor, eps: Tensor, alpha_bar: AlphaBar) -> Tensor:
    """x̂_0 = (x_t - √(1-ᾱ_t) ε)/√ᾱ_t (eq. 4 inverted) for one ᾱ_t, a number or a tensor."""
    return (xt - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5


def eps_from_x0(xt: Tensor, x0: Tensor, alpha_bar: AlphaBar) -> Tensor:
    """ε = (x_t - √ᾱ_t x_0)/√(1-ᾱ_t) for one ᾱ_t < 1, a number or a tensor."""
    return (xt - alpha_bar**0.5 * x0) / (1 - alpha_bar) ** 0.5


def dynamic_threshold(x0: Tensor, percentile: float = DYNAMIC_PERCENTILE) -> Tensor:
    """Dynamic thresholding (Saharia et al. 2022, §2.3), image by image.

    s = max(1, the `percentile` quantile of |x̂_0| over the image); x̂_0 -> clamp(x̂_0, -s, s)/s.
    So an image already inside [-1, 1] is unchanged, and a saturated one is pulled back inside
    instead of being cut at ±1. x0: (B, ...) float; returns the same shape and dtype.
    """
    flat = x0.abs().reshape(x0.shape[0], -1)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()  # quantile takes float32/64 only
    s = torch.quantile(flat, percentile, dim=1).clamp(min=1.0).to(x0.dtype)
    s = s.reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def handle_x0(x0: Tensor, mode: X0Mode) -> Tensor:
    """x̂_0 as `mode` says: none as is, clip and clip_eps clamped to [-1, 1], dynamic thresholded."""
    if mode == "none":
        return x0
    if mode in ("clip", "clip_eps"):
        return x0.clamp(-1.0, 1.0)
    if mode == "dynamic":
        return dynamic_threshold(x0)
    raise ValueError(f"unknown x0 mode {mode!r}; choose one of: {', '.join(X0_MODES)}")


def x0_and_eps(xt: Tensor, eps: Tensor, alpha_bar: AlphaBar, mode: X0Mode) -> tuple[Tensor, Tensor]:
    """x̂_0 from ε̂ handled as `mode` says, and the ε̂ to step with. Returns (x̂_0, ε̂).

    none: x̂_0 as predicted. clip: x̂_0 clamped to [-1, 1], ε̂ kept (diffusers' DDIM default,
    use_clipped_model_output=False). clip_eps: clamped, and ε̂ recomputed from the clamped x̂_0 so
    the two agree (improved-diffusion's DDIM; diffusers' use_clipped_model_output=True). dynamic:
    `dynamic_threshold`, ε̂ kept. A sampler that uses x̂_0 alone (DDPM's posterior mean,
    DPM-Solver++'s data prediction) makes clip and clip_eps the same thing.
    """
    x0 = handle_x0(x0_from_eps(xt, eps, alpha_bar), mode)
    return x0, (eps_from_x0(xt, x0, alpha_bar) if mode == "clip_eps" else eps)


def p_mean_variance(
    sched: NoiseSchedule,
    xt: Tensor,
    t: Tensor,
    eps: Tensor,
    variance: Variance = "fixed_small",
    x0_mode: X0Mode = "clip",
) -> tuple[Tensor, Tensor, Tensor]:
    """p_θ(x_{t-1} | x_t): mean through x̂_0 and the posterior, variance fixed (DDPM §3.2).

    fixed_small: σ_t² = β̃_t (the posterior's); fixed_large: σ_t² = β_t, with β̃_2 at t = 1
    as in DDPM's code. x0_mode (see `x0_and_eps`; DDPM's code clips) handles x̂_0; the mean
    uses x̂_0 alone, so clip and clip_eps agree. Returns (mean, log σ_t², x̂_0).
    """
    x0 = handle_x0(predict_x0_from_eps(sched, xt, t, eps), x0_mode)
    mean, _, log_var = q_posterior(sched, x0, xt, t)
    if variance == "fixed_large":
        large = torch.cat([sched.posterior_variance[1:2], sched.betas[1:]]) if sched.T > 1 else sched.betas
        log_var = extract(torch.log(large), t, xt)
    elif variance != "fixed_small":
        raise ValueError(f"unknown variance {variance!r}")
    return mean, log_var, x0


def p_sample_step(
    sched: NoiseSchedule,
    xt: Tensor,
    t: Tensor,
    eps: Tensor,
    noise: Tensor,
    variance: Variance = "fixed_small",
    x0_mode: X0Mode = "clip",
) -> tuple[Tensor, Tensor]:
    """One ancestral step x_t -> x_{t-1} = μ_θ + σ_t z (Algorithm 2); no noise is added at t = 0.

    Returns (x_{t-1}, x̂_0).
    """
    mean, log_var, x0 = p_mean_variance(sched, xt, t, eps, variance, x0_mode)
    nonzero = (t != 0).to(xt.dtype).reshape(-1, *([1] * (xt.ndim - 1)))
    return mean + nonzero * torch.exp(0.5 * log_var) * noise, x0


def sample_timesteps(batch: int, T: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """t ~ Uniform{0, ..., T-1}: every step is trained. (B,) long on `device`; the generator must
    live on that device too."""
    return torch.randint(0, T, (batch,), device=device, generator=generator)


def snr(sched: NoiseSchedule, t: Tensor) -> Tensor:
    """SNR_t = ᾱ_t/(1-ᾱ_t) at training indices t: (B,) in the schedule's dtype, on t's device."""
    a = sched.alphas_cumprod.to(t.device)[t]
    return a / (1 - a)


def loss_weights(
    sched: NoiseSchedule, t: Tensor, loss_weight: LossWeight, prediction: Prediction, gamma: float = 5.0
) -> Tensor:
    """Per-sample weights of the loss: (B,) in the schedule's dtype, on t's device.

    uniform: 1 (L_simple). min_snr (Hang et al. 2023, min-SNR-γ): the x_0-loss weight
    min(SNR_t, γ) written for the network's target, min(SNR_t, γ)/SNR_t for ε (= min(1, γ/SNR_t),
    finite where SNR_t is 0) and min(SNR_t, γ)/(SNR_t + 1) for v.
    """
    r = snr(sched, t)
    if loss_weight == "uniform":
        return torch.ones_like(r)
    if loss_weight != "min_snr":
        raise ValueError(f"unknown loss weighting {loss_weight!r}; choose uniform or min_snr")
    if prediction == "eps":
        return (gamma / r).clamp(max=1.0)
    return r.clamp(max=gamma) / (r + 1)


def training_loss(
    eps_model: EpsModel,
    sched: NoiseSchedule,
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
    prediction: Prediction = "eps",
    loss_weight: LossWeight = "uniform",
    min_snr_gamma: float = 5.0,
) -> Tensor:
    """L_simple = E ||ε - ε_θ(√ᾱ_t x_0 + √(1-ᾱ_t) ε, t)||² (eq. 14), averaged over all elements.

    prediction "v": the network (`eps_model` is then a v-model) is regressed onto `predict_v`.
    loss_weight "min_snr": each sample's mean squared error is weighted by `loss_weights`
    before the mean over the batch. Returns a 0-d float32 tensor.
    """
    xt = q_sample(sched, x0, t, noise)
    out = eps_model(xt, t).float()
    if prediction == "eps":
        target = noise
    elif prediction == "v":
        target = predict_v(sched, x0, t, noise)
    else:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of: {', '.join(PREDICTIONS)}")
    if loss_weight == "uniform":
        return F.mse_loss(out, target.float())
    w = loss_weights(sched, t, loss_weight, prediction, min_snr_gamma).to(out.device, torch.float32)
    per_sample = (out - target.float()).square().reshape(out.shape[0], -1).mean(dim=1)
    return (w * per_sample).mean()
