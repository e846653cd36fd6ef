"""Classifier-free guidance (Ho & Salimans 2022) as an ε-model, so every sampler uses it unchanged.

    ε̃(x_t, t, c) = ε(x_t, t, ∅) + w · (ε(x_t, t, c) − ε(x_t, t, ∅))

Convention: w = 0 is the unconditional model, w = 1 the plain conditional model, w > 1 pushes
the samples further towards c (Ho & Salimans write the same as (1 + w') ε_c − w' ε_∅, w = 1 + w').
At w = 0 and w = 1 only the one network call needed is made, so the result is exactly that
model's ε; otherwise both halves go through the network as one batch of 2B.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from ddpmkit.diffusion import EpsModel

# the network with its condition: cond_eps(x_t (B, C, H, W), t (B,), cond (B, K), drop (B,) bool) -> ε̂
CondEpsModel = Callable[[Tensor, Tensor, Optional[Tensor], Optional[Tensor]], Tensor]


def guided_eps(cond_eps: CondEpsModel, cond: Tensor, w: float) -> EpsModel:
    """ε̃(x_t, t) for condition `cond`: (K,) shared by the batch, or (B, K). See the module for w."""
    w = float(w)

    def batch_cond(x: Tensor) -> Tensor:
        c = cond.to(x.device)
        return c.expand(x.shape[0], -1) if c.dim() == 1 else c

    def eps(x: Tensor, t: Tensor) -> Tensor:
        c = batch_cond(x)
        B = x.shape[0]
        t = t.expand(B) if t.dim() == 0 else t
        if w == 0.0:
            return cond_eps(x, t, c, torch.ones(B, dtype=torch.bool, device=x.device))
        if w == 1.0:
            return cond_eps(x, t, c, torch.zeros(B, dtype=torch.bool, device=x.device))
        drop = torch.cat([torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)]).to(x.device)
        e = cond_eps(torch.cat([x, x]), torch.cat([t, t]), torch.cat([c, c]), drop)
        e_c, e_u = e[:B], e[B:]
        return e_u + w * (e_c - e_u)

    return eps
