"""Inpainting with RePaint (Lugmayr et al. 2022, Algorithm 1), on the DDPM ancestral chain.

The network is unconditional; the known pixels condition it step by step. At every reverse step
x_t -> x_{t-1}, with m = 1 where the image is to be filled and 0 where it is known,

    x_{t-1}^known   ~ q(x_{t-1} | x_0)  = N(√ᾱ_{t-1} x_0, (1-ᾱ_{t-1}) I)      (from the input)
    x_{t-1}^unknown ~ p_θ(x_{t-1} | x_t)                                      (DDPM, Algorithm 2)
    x_{t-1}         = m ⊙ x_{t-1}^unknown + (1 - m) ⊙ x_{t-1}^known

and the last step (into x_0) takes the known pixels as they are. The two halves are drawn
independently, so they need not agree at the border; resampling harmonises them: after a
reverse step the chain goes back up by re-noising, x_t ~ q(x_t | x_{t-1}) = N(√α_t x_{t-1}, β_t I),
and steps down again, so the model sees the known region's influence on its own sample. With
jump length j and r resamplings, the chain goes back up j steps at a time, r - 1 times at each
multiple of j below N - j (the paper's schedule: `repaint_schedule`). r = 1 (or j = 1, r = 1)
is the replacement method (Song et al. 2021, "replacement"; Lugmayr et al.'s baseline).

The chain is the DDPM sampler's respaced chain of N steps (`DDPMSampler`, β'_i = 1 - ᾱ_{t_i}/ᾱ_{t_{i-1}}):
RePaint's T = 250 is the respaced chain of N = 250 steps of a T = 1000 model, as in the paper.
Chain index k = 0..N-1 is the sampler's position N-1-k (k = N-1 is x_T); k = -1 is the clean image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ddpmkit.diffusion import EpsModel, q_sample
from ddpmkit.errors import DdpmkitError
from ddpmkit.samplers.ddpm import DDPMSampler
from ddpmkit.samplers.loop import StepCallback
from ddpmkit.samplers.noise import Noise, randn
from ddpmkit.schedule import extract
from ddpmkit.settings import REPAINT_JUMP, REPAINT_RESAMPLE, REPAINT_STEPS

# the paper's settings for faces (CelebA-HQ): T = 250, j = 10, r = 10
PAPER_STEPS, PAPER_JUMP, PAPER_RESAMPLE = REPAINT_STEPS, REPAINT_JUMP, REPAINT_RESAMPLE


def repaint_schedule(num_steps: int, jump: int = 1, resample: int = 1) -> list[int]:
    """The chain indices RePaint visits, in order: N-1 (x_T) first, -1 (the inpainted x_0) last.

    Consecutive entries differ by one: a decrease is a reverse step (a network call), an increase
    a re-noising step. At each jump point k = 0, j, 2j, ... below N - j, on arriving at k the
    chain goes back up j steps and down again, r - 1 times (the paper's schedule, Appendix B).
    With N = 6, j = 2, r = 2: 5 4 3 2 3 4 3 2 1 0 1 2 1 0 -1.
    """
    if num_steps < 1 or jump < 1 or resample < 1:
        raise DdpmkitError(f"steps, jump and resample must be >= 1, got {num_steps}, {jump}, {resample}")
    left = {k: resample - 1 for k in range(0, num_steps - jump, jump)}  # ups left at each jump point
    k, visited = num_steps - 1, [num_steps - 1]
    while k >= 0:
        k -= 1
        visited.append(k)
        if left.get(k, 0) > 0:
            left[k] -= 1
            for _ in range(jump):
                k += 1
                visited.append(k)
    return visited


def network_calls(num_steps: int, jump: int = 1, resample: int = 1) -> int:
    """Reverse steps in the schedule: N + (r - 1)·j·(number of jump points)."""
    visited = repaint_schedule(num_steps, jump, resample)
    return sum(b < a for a, b in zip(visited, visited[1:]))


@dataclass
class RePaint:
    """RePaint over a DDPM sampler's chain (set to N steps); jump j >= 1, resample r >= 1."""

    sampler: DDPMSampler
    jump: int = PAPER_JUMP
    resample: int = PAPER_RESAMPLE

    def __post_init__(self) -> None:
        if len(self.sampler.timesteps) == 0:
            self.sampler.set_timesteps()
        self.schedule = repaint_schedule(len(self.sampler.timesteps), self.jump, self.resample)
        # the move that leaves index k for the last time: the monotone final descent (for callbacks)
        self._last_down = {a: pos for pos, (a, b) in enumerate(zip(self.schedule, self.schedule[1:])) if b < a}
        chain = self.sampler.respaced
        self._sqrt_alpha, self._sqrt_beta = chain.alphas.sqrt(), chain.betas.sqrt()

    def __len__(self) -> int:
        """Network calls per batch (reverse steps)."""
        return sum(b < a for a, b in zip(self.schedule, self.schedule[1:]))

    def known_at(self, x0: Tensor, k: int, generator: Noise) -> Tensor:
        """q(x_k | x_0) on the chain (x0 itself at k = -1). x0: (B, C, H, W) in [-1, 1]."""
        if k < 0:
            return x0
        kk = torch.full((x0.shape[0],), k, device=x0.device, dtype=torch.long)
        return q_sample(self.sampler.respaced, x0, kk, randn(x0.shape, generator, x0.device, x0.dtype))

    def renoise(self, x: Tensor, k: int, generator: Noise) -> Tensor:
        """x_{k+1} ~ q(x_{k+1} | x_k) = N(√α'_{k+1} x_k, β'_{k+1} I) on the chain."""
        kk = torch.full((x.shape[0],), k + 1, device=x.device, dtype=torch.long)
        z = randn(x.shape, generator, x.device, x.dtype)
        return extract(self._sqrt_alpha, kk, x) * x + extract(self._sqrt_beta, kk, x) * z

    @torch.no_grad()
    def inpaint(
        self,
        eps_model: EpsModel,
        x0: Tensor,
        fill: Tensor,
        *,
        generator: Noise = None,
        x_T: Optional[Tensor] = None,
        callback: Optional[StepCallback] = None,
    ) -> Tensor:
        """Fill the masked part of x0. Returns x_0: (B, C, H, W), known pixels exactly x0's.

        x0: (B, C, H, W) in [-1, 1], the known image (values under the mask are ignored); fill:
        (B or 1, 1, H, W), 1 (or True) where to fill, 0 where known; x_T: the start
        (default N(0, I), drawn from generator). generator: as `samplers.sample`'s
        (PerImageNoise: image b's result depends only on its own seed). callback(i, t, x, x̂_0)
        sees the final descent as `samplers.sample` reports a plain run: (-1, t_first, x_T,
        None), then (i, t_i, x, x̂_0) after each sampler position i; each x as the final descent
        leaves it (after any resampling), x̂_0 with the known region pasted in.
        """
        smp, n = self.sampler, len(self.sampler.timesteps)
        fill = fill.to(x0.device) > 0.5  # a selection, not a blend: known pixels come through exactly
        x = randn(x0.shape, generator, x0.device, x0.dtype) if x_T is None else x_T.to(x0.device, x0.dtype)
        # reported lazily: a state as the final descent leaves it (x_T too may be resampled)
        pending: tuple[int, Optional[Tensor]] = (-1, None)  # the last final-descent step's (i, x̂_0)
        for pos, (k, k_next) in enumerate(zip(self.schedule, self.schedule[1:])):
            if k_next > k:
                x = self.renoise(x, k, generator)
                continue
            i = n - 1 - k
            final = self._last_down[k] == pos
            if final and callback is not None:
                callback(pending[0], int(smp.timesteps[max(pending[0], 0)]), x, pending[1])
            tt = torch.full((x.shape[0],), int(smp.timesteps[i]), device=x.device, dtype=torch.long)
            out = smp.step(eps_model(x, tt).to(x.dtype), i, x, generator)
            known = self.known_at(x0, k_next, generator)
            x = torch.where(fill, out.prev_sample, known)
            if final:
                pending = (i, torch.where(fill, out.pred_x0, x0))
        if callback is not None:
            callback(pending[0], int(smp.timesteps[pending[0]]), x, pending[1])
        return x
