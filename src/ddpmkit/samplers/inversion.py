"""DDIM inversion: run the deterministic DDIM ODE (η = 0) upwards, from an image x_0 to its x_T.

DDIM with η = 0 is a solver of the probability-flow ODE, so it can be run in either direction
(Song et al. 2021, §4.3 and §5.4; Dhariwal & Nichol 2021, App. F). Going up from level ᾱ_s
to the next visited, noisier level ᾱ_t < ᾱ_s, with ε̂ the network's prediction:

    x̂_0 = (x_s - √(1-ᾱ_s) ε̂) / √ᾱ_s,     x_t = √ᾱ_t x̂_0 + √(1-ᾱ_t) ε̂

which is the sampler's step with the two levels swapped. The levels are exactly the decoder's
(`DDIMSampler` at the same steps and spacing), 1 (the image itself) first, so decoding the x_T
found here walks back over the same grid. The decoder's step from t to s uses ε̂ at the noisier
end, ε_θ(x_t, t); going up, x_t is what is being computed, so ε̂ is taken at the current x_s and
the target index t, ε_θ(x_s, t) (diffusers' DDIMInverseScheduler, null-text inversion): the one
choice that also covers the first step, from x_0, where the network has no index of its own.
The two ends' ε̂ differ by O(step), so encode-then-decode reconstructs up to an error that
halves as the steps double. `refine` re-takes ε̂ at the x_t found so far, ε_θ(x_t, t), a few
times: the fixed point is the x_t whose decoder step lands exactly on x_s, so the error falls
much faster per network call than with more steps (tests/test_interpolate.py on the analytic
Gaussian; benchmarks/inversion_check.py on a trained model).

x̂_0 is not clipped (mode "none"): the inversion must be the decoder's ODE run backwards, and a
clamp is many-to-one, so no x_T decodes back through it to an image it altered; mid-way up, x̂_0 of
a real image often leaves [-1, 1] by a little, and clipping there would bend the path. Decode
such an x_T with x0 "none" too (`invertible_ddim` builds that sampler).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ddpmkit.diffusion import EpsModel, x0_from_eps
from ddpmkit.samplers.ddim import DDIMSampler
from ddpmkit.samplers.loop import StepCallback
from ddpmkit.schedule import NoiseSchedule


def invertible_ddim(sched: NoiseSchedule, steps: Optional[int] = None, spacing: Optional[str] = None) -> DDIMSampler:
    """The decoder that `ddim_invert` inverts: DDIM, η = 0, x̂_0 unclipped, at `steps` steps."""
    sampler = DDIMSampler(sched, spacing, eta=0.0, x0="none")
    sampler.set_timesteps(steps)
    return sampler


def _check_invertible(sampler: DDIMSampler) -> None:
    if not isinstance(sampler, DDIMSampler) or sampler.eta != 0.0:
        raise ValueError("DDIM inversion needs the deterministic DDIM sampler (eta = 0)")
    if sampler.x0 != "none":
        raise ValueError(f"DDIM inversion needs x0 mode 'none' (a clamp cannot be inverted), not {sampler.x0!r}")
    if len(sampler.timesteps) == 0:
        raise ValueError("set the sampler's timesteps before inverting")


@torch.no_grad()
def ddim_invert(
    eps_model: EpsModel,
    sampler: DDIMSampler,
    x0: Tensor,
    *,
    refine: int = 0,
    callback: Optional[StepCallback] = None,
) -> Tensor:
    """Encode images to the x_T that `sampler` decodes back to them (approximately).

    x0: (B, C, H, W) in [-1, 1], float32 on the device. sampler: `invertible_ddim` (η = 0, x0
    mode none, timesteps set). Returns x_T: (B, C, H, W), same dtype and device, roughly N(0, I).
    refine: extra network calls a step, each re-taking ε̂ at the x_t found so far, ε_θ(x_t, t):
    fixed-point iterations towards the x_t whose decoder step lands exactly on x_s (the implicit
    step; 0 = the explicit one, N network calls in all). callback(k, t, x, x̂_0) after each of the
    N steps up (k = 0..N-1, t the index reached).
    """
    _check_invertible(sampler)
    a = sampler.sched.alphas_cumprod
    up = sampler.timesteps.flip(0).tolist()  # increasing: τ_1 < ... < τ_N
    # ᾱ of the levels, the image's (1) first, as 0-dim tensors on the schedule's device
    levels = torch.cat([a.new_ones(1), a[sampler.timesteps.flip(0).to(a.device)]])
    x = x0
    for k, t in enumerate(up):
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        eps = eps_model(x, tt).to(x.dtype)
        pred_x0 = x0_from_eps(x, eps, levels[k])
        x_next = levels[k + 1].sqrt() * pred_x0 + (1 - levels[k + 1]).sqrt() * eps
        for _ in range(refine):
            eps = eps_model(x_next, tt).to(x.dtype)
            pred_x0 = x0_from_eps(x, eps, levels[k])
            x_next = levels[k + 1].sqrt() * pred_x0 + (1 - levels[k + 1]).sqrt() * eps
        x = x_next
        if callback is not None:
            callback(k, t, x, pred_x0)
    return x
