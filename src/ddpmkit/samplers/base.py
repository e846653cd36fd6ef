"""One interface for every sampler, so they swap freely (the shape of diffusers' schedulers).

    sampler.set_timesteps(N)              # choose N of the T training steps
    state = sampler.new_state()           # what one run carries between steps (multistep history)
    for i, t in enumerate(sampler.timesteps):
        eps = eps_model(x, t)              # the network is called at the training index t
        x = sampler.step(eps, i, x, noise, state).prev_sample

A sampler holds its configuration and per-step coefficients only: everything that belongs to one
run lives in `state`, so one sampler object can be reused, and shared by concurrent runs.
The coefficients are tensors on the schedule's device, read by index inside `step`: no step
copies a number back to the host (no device synchronisation).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from ddpmkit.diffusion import X0_MODES, X0Mode
from ddpmkit.samplers.noise import Noise
from ddpmkit.samplers.respace import space_timesteps
from ddpmkit.schedule import NoiseSchedule


@dataclass
class StepOutput:
    prev_sample: Tensor  # x at the next (less noisy) timestep, (B, C, H, W)
    pred_x0: Tensor  # the current estimate of x_0, (B, C, H, W)


def x0_mode(x0: "X0Mode | None", default: "X0Mode" = "clip_eps") -> X0Mode:
    """An x̂_0 mode from its name; None: `default` (a sampler's `default_x0`). (The settings turn
    the old `clip_x0` flag of stored checkpoints into a name: `SampleConfig`.)"""
    if x0 is None:
        return default
    if x0 not in X0_MODES:
        raise ValueError(f"unknown x0 mode {x0!r}; choose one of: {', '.join(X0_MODES)}")
    return x0


class Sampler(ABC):
    """A reverse-process solver over a fixed training schedule.

    spacing None: the sampler's `default_spacing`, chosen on the analytic Gaussian fixture as the
    spacing whose error is never far from the best one's, over data sets and step counts 5-50
    (benchmarks/results_sampler_accuracy.md). x0 None: the sampler's `default_x0`, chosen by the
    colours and FID of trained models' samples (benchmarks/results_quality.md).
    """

    name: str = "sampler"
    default_steps: Optional[int] = 50  # network calls when none are asked for; None = all T
    default_spacing: str = "trailing"
    default_x0: "X0Mode" = "clip"

    def __init__(self, sched: NoiseSchedule, spacing: Optional[str] = None, x0: "X0Mode | bool | None" = None) -> None:
        self.sched = sched
        self.spacing = spacing or self.default_spacing
        self.x0 = x0_mode(x0, self.default_x0)
        self.timesteps: Tensor = torch.empty(0, dtype=torch.long)  # on the host: loop control only

    @classmethod
    @abstractmethod
    def from_config(cls, sched: NoiseSchedule, cfg) -> "Sampler":  # cfg: settings.SampleConfig
        """Build from the `sample` settings, reading the options this sampler has."""

    @classmethod
    def steps_for(cls, T: int) -> int:
        """The default number of steps on a T-step schedule: default_steps (None: T), at most T."""
        return T if cls.default_steps is None else min(cls.default_steps, T)

    def set_timesteps(self, num_steps: int | None = None) -> None:
        """Pick the training indices to visit, in decreasing order: (N,) long, on the host."""
        n = self.steps_for(self.sched.T) if num_steps is None else num_steps
        use = space_timesteps(self.sched.T, n, self.spacing)
        self.timesteps = torch.tensor(sorted(use, reverse=True), dtype=torch.long)
        self._on_set_timesteps()

    def _on_set_timesteps(self) -> None:
        """Hook for samplers that precompute per-step coefficients."""

    def _alphas_cumprod(self) -> Tensor:
        """ᾱ at the visited steps then 1 (the clean image after the last): (N+1,), on the
        schedule's device and in its dtype."""
        a = self.sched.alphas_cumprod
        return torch.cat([a[self.timesteps.to(a.device)], a.new_ones(1)])

    def new_state(self) -> Any:
        """The state one run carries from step to step (None: this sampler needs none)."""
        return None

    @abstractmethod
    def step(
        self,
        eps: Tensor,
        i: int,
        x: Tensor,
        generator: Noise = None,
        state: Any = None,
    ) -> StepOutput:
        """Advance x from timesteps[i] to timesteps[i+1] (to x_0 after the last).

        generator: the per-step noise of stochastic samplers (see `noise.Noise`); state: this
        run's `new_state()`.
        """

    def __len__(self) -> int:
        return len(self.timesteps)
