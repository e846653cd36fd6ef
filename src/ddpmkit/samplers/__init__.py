"""Samplers: each turns an ε-prediction into a step of the reverse process."""

from __future__ import annotations

from ddpmkit.samplers.base import Sampler, StepOutput
from ddpmkit.samplers.ddim import DDIMSampler
from ddpmkit.samplers.ddpm import DDPMSampler
from ddpmkit.samplers.dpm_solver import DPMSolverPPSampler
from ddpmkit.samplers.loop import sample
from ddpmkit.schedule import NoiseSchedule

SAMPLERS: dict[str, type[Sampler]] = {
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "dpmsolver++": DPMSolverPPSampler,
}


def make_sampler(sched: NoiseSchedule, cfg) -> Sampler:  # cfg: settings.SampleConfig
    """Build and set up the sampler that `cfg.sampler` names, with `cfg.steps` steps."""
    from ddpmkit.errors import DdpmkitError

    if cfg.sampler not in SAMPLERS:
        raise DdpmkitError(f"unknown sampler '{cfg.sampler}'; choose one of: {', '.join(SAMPLERS)}")
    sampler = SAMPLERS[cfg.sampler].from_config(sched, cfg)
    sampler.set_timesteps(cfg.steps)
    return sampler


__all__ = [
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverPPSampler",
    "SAMPLERS",
    "Sampler",
    "StepOutput",
    "make_sampler",
    "sample",
]
