"""One interface for every sampler, so they swap freely (the shape of diffusers' schedulers).

    sampler.set_timesteps(N)              # choose N of the T training steps
    for i, t in enumerate(sampler.timesteps):
        eps = eps_model(x, t)              # the network is called at the training index t
        x = sampler.step(eps, i, x, generator).prev_sample
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from ddpmkit.samplers.respace import space_timesteps
from ddpmkit.schedule import NoiseSchedule


@dataclass
class StepOutput:
    prev_sample: Tensor  # x at the next (less noisy) timestep, (B, C, H, W)
    pred_x0: Tensor  # the current estimate of x_0, (B, C, H, W)


class Sampler(ABC):
    """A reverse-process solver over a fixed training schedule."""

    name: str = "sampler"
    default_steps: int = 50

    def __init__(self, sched: NoiseSchedule, spacing: str = "uniform") -> None:
        self.sched = sched
        self.spacing = spacing
        self.timesteps: Tensor = torch.empty(0, dtype=torch.long)

    @classmethod
    @abstractmethod
    def from_config(cls, sched: NoiseSchedule, cfg) -> "Sampler":  # cfg: settings.SampleConfig
        """Build from the `sample` settings, reading the options this sampler has."""

    def set_timesteps(self, num_steps: int | None = None) -> None:
        """Pick the training indices to visit, in decreasing order: (N,) long."""
        n = self.default_steps if num_steps is None else num_steps
        use = space_timesteps(self.sched.T, n, self.spacing)
        self.timesteps = torch.tensor(sorted(use, reverse=True), dtype=torch.long)
        self._on_set_timesteps()

    def _on_set_timesteps(self) -> None:
        """Hook for samplers that precompute per-step coefficients or reset history."""

    @abstractmethod
    def step(self, eps: Tensor, i: int, x: Tensor, generator: torch.Generator | None = None) -> StepOutput:
        """Advance x from timesteps[i] to timesteps[i+1] (to x_0 after the last)."""

    def __len__(self) -> int:
        return len(self.timesteps)
