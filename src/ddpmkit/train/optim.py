"""The optimizer and its learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

from ddpmkit.settings import TrainConfig


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int = 0, decay: str = "constant") -> float:
    """The learning rate of optimizer step `step` (0-based): a linear warm-up from 0 over
    warmup_steps, then constant (DDPM's schedule) or a cosine decay to 0 at total_steps (short
    runs end with the weights settled, not mid-oscillation)."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if decay == "cosine" and total_steps > warmup_steps:
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr


def warmup_of(cfg: TrainConfig, total_steps: int) -> int:
    """The warm-up's length in steps for a run of `total_steps`: train.warmup_steps when set (a
    step count wins, as over a time budget), else train.warmup_fraction of the run (rounded),
    else none."""
    if cfg.warmup_steps is not None:
        return cfg.warmup_steps
    if cfg.warmup_fraction is not None:
        return int(round(cfg.warmup_fraction * total_steps))
    return 0


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam or AdamW as `cfg.optimizer` says, fused into one kernel on CUDA."""
    kwargs: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if device.type == "cuda":
        kwargs["fused"] = True
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, **kwargs)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
