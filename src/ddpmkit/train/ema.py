"""Exponential moving average of the weights, the copy DDPM samples from (decay 0.9999)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """θ_ema ← d·θ_ema + (1-d)·θ after every optimizer step.

    With warmup, d = min(decay, (1+n)/(10+n)) after n updates, so a short run's EMA is not
    stuck near the random initialisation (a 0.9999 average needs ~10k steps to forget it).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        # torch.compile wrappers and DDP are not copied: callers pass the bare module

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        # one fused kernel over all tensors instead of one launch per parameter
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)
        self.num_updates += 1
