"""Samplers: each turns an ε-prediction into a step of the reverse process."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ddpmkit.errors import DdpmkitError

from ddpmkit.samplers.base import Sampler, StepOutput
from ddpmkit.samplers.ddim import DDIMSampler
from ddpmkit.samplers.ddpm import DDPMSampler
from ddpmkit.samplers.dpm_solver import DPMSolverPPSampler
from ddpmkit.samplers.loop import StepCallback, sample
from ddpmkit.samplers.noise import Noise, PerImageNoise, image_seed
from ddpmkit.samplers.respace import SPACINGS
from ddpmkit.schedule import NoiseSchedule

if TYPE_CHECKING:
    from ddpmkit.settings import SampleConfig

SAMPLERS: dict[str, type[Sampler]] = {
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "dpmsolver++": DPMSolverPPSampler,
}


def default_steps(sampler: str, T: int) -> int:
    """Network calls when none are asked for: all T for DDPM (Algorithm 2), else min(50, T)."""
    return SAMPLERS[sampler].steps_for(T)


def default_spacing(sampler: str) -> str:
    """The spacing a sampler uses when none is asked for (measured on the Gaussian fixture)."""
    return SAMPLERS[sampler].default_spacing


def make_sampler(sched: NoiseSchedule, cfg: "SampleConfig") -> Sampler:
    """Build the sampler that `cfg.sampler` names, set to `cfg.steps` steps (None: the default)."""
    if cfg.sampler not in SAMPLERS:
        raise DdpmkitError(f"unknown sampler '{cfg.sampler}'; choose one of: {', '.join(SAMPLERS)}")
    sampler = SAMPLERS[cfg.sampler].from_config(sched, cfg)
    sampler.set_timesteps(cfg.steps)
    return sampler


__all__ = [
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverPPSampler",
    "Noise",
    "PerImageNoise",
    "SAMPLERS",
    "SPACINGS",
    "Sampler",
    "StepCallback",
    "StepOutput",
    "default_spacing",
    "default_steps",
    "image_seed",
    "make_sampler",
    "sample",
]
