"""Every sampler against an independent implementation: diffusers' schedulers, configured alike.

The network is a deterministic stand-in, ε(x, t) = 0.5 sin(x) (t+1)/T + 0.1 x: it depends on x
and t, so a wrong timestep, coefficient or history shows up in the trajectory. diffusers indexes
timesteps 0..T-1 exactly like us (index t = the paper's step t+1), so ᾱ tables line up.

diffusers builds its ᾱ table in float32; for the float64 comparisons we replace it by ours (the
same numbers, to float32 precision) so the tolerance measures the arithmetic, not the table.
"""

from __future__ import annotations

import math

import pytest
import torch

from ddpmkit.samplers import (
    SAMPLERS,
    DDIMSampler,
    DDPMSampler,
    DPMSolverPPSampler,
    make_sampler,
    sample,
)
from ddpmkit.samplers.respace import space_timesteps
from ddpmkit.schedule import NoiseSchedule, linear_betas
from ddpmkit.settings import SampleConfig

import diffusers  # a test-only dependency: pyproject [test]

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

T = 1000
SHAPE = (2, 3, 8, 8)


def stand_in_eps(T_: int):
    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return 0.5 * torch.sin(x) * (tt + 1) / T_ + 0.1 * x

    return eps


def sched_T(T_: int = T) -> NoiseSchedule:
    return NoiseSchedule.from_betas(linear_betas(T_, 1e-4, 0.02))


def x_T(dtype=torch.float64) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)


def ours(sampler, x, seed=7) -> list[torch.Tensor]:
    """Our trajectory: x after every step, through the shared loop."""
    traj: list[torch.Tensor] = []
    sample(
        stand_in_eps(sampler.sched.T),
        sampler,
        SHAPE,
        x_T=x.clone(),
        generator=torch.Generator().manual_seed(seed),
        callback=lambda i, t, xi, x0: traj.append(xi.clone()),
    )
    return traj


def theirs(scheduler, timesteps, x, seed=7, **step_kwargs) -> list[torch.Tensor]:
    """diffusers' trajectory over the same timesteps with the same stand-in network."""
    eps_fn = stand_in_eps(len(scheduler.alphas_cumprod))
    gen = torch.Generator().manual_seed(seed)
    traj: list[torch.Tensor] = []
    x = x.clone()
    for t in timesteps:
        eps = eps_fn(x, torch.full((x.shape[0],), int(t)))
        x = scheduler.step(eps, int(t), x, generator=gen, **step_kwargs).prev_sample
        traj.append(x.clone())
    return traj


def assert_same_trajectory(a: list[torch.Tensor], b: list[torch.Tensor], rtol: float, atol: float) -> None:
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b)):
        torch.testing.assert_close(u, v, rtol=rtol, atol=atol, msg=lambda m: f"step {i}: {m}")


def use_float64_table(scheduler, sched: NoiseSchedule) -> None:
    scheduler.alphas_cumprod = sched.alphas_cumprod.clone()


# ----------------------------------------------------------------------------- DDPM


@pytest.mark.parametrize(
    "T_,steps,variance,clip",
    [(100, 100, "fixed_small", True), (1000, 50, "fixed_small", False), (1000, 25, "fixed_large", True)],
)
def test_ddpm_matches_diffusers_ddpm_scheduler(T_, steps, variance, clip):
    """Respaced ancestral DDPM = DDPMScheduler with our timesteps passed as custom timesteps.

    Both draw z from the same generator in the same order (one randn per step; diffusers skips
    the draw at t = 0, our last step, where neither adds noise), so the noisy paths coincide.
    """
    sched = sched_T(T_)
    ours_s = DDPMSampler(sched, "uniform", variance, clip)
    ours_s.set_timesteps(steps)
    ref = diffusers.DDPMScheduler(
        num_train_timesteps=T_,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        variance_type=variance,
        clip_sample=clip,
        prediction_type="epsilon",
    )
    ref.set_timesteps(timesteps=ours_s.timesteps.tolist())
    use_float64_table(ref, sched)
    x = x_T()
    assert_same_trajectory(ours(ours_s, x), theirs(ref, ref.timesteps, x), rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- DDIM


def ddim_cfg(**kw) -> SampleConfig:
    return SampleConfig(sampler="ddim", **kw)


@pytest.mark.parametrize("steps,eta,clip", [(10, 0.0, False), (50, 0.0, True), (20, 0.5, True), (10, 1.0, False)])
def test_ddim_matches_diffusers_ddim_scheduler(steps, eta, clip):
    """DDIM with our 'trailing' spacing = DDIMScheduler(timestep_spacing='trailing').

    diffusers' DDIM always steps to t - T//N, so it only accepts evenly strided timesteps: with
    T divisible by N, 'trailing' (…, 2T/N-1, T/N-1) is such a set, identical to ours. After the
    last step both go to ᾱ = 1 (set_alpha_to_one=True). With clipping we re-derive ε̂ from the
    clipped x̂_0 (improved-diffusion's choice) = diffusers' use_clipped_model_output=True.
    """
    sched = sched_T()
    ours_s = DDIMSampler.from_config(sched, ddim_cfg(spacing="trailing", eta=eta, clip_x0=clip))
    ours_s.set_timesteps(steps)
    ref = diffusers.DDIMScheduler(
        num_train_timesteps=T,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        clip_sample=clip,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
        prediction_type="epsilon",
    )
    ref.set_timesteps(steps)
    assert ref.timesteps.tolist() == ours_s.timesteps.tolist()
    use_float64_table(ref, sched)
    x = x_T()
    got = ours(ours_s, x)
    want = theirs(ref, ref.timesteps, x, eta=eta, use_clipped_model_output=True)
    assert_same_trajectory(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("spacing,clip", [("uniform", False), ("quadratic", True)])
def test_ddim_eta0_is_first_order_dpm_solver_on_any_spacing(spacing, clip):
    """Uneven spacings, which DDIMScheduler cannot take, checked against diffusers' first-order
    DPM-Solver++ (= DDIM with η = 0, Lu et al. 2022b §3) on our timesteps; clipping = its
    thresholding with sample_max_value=1. diffusers computes this in float32."""
    sched = sched_T()
    ours_s = DDIMSampler.from_config(sched, ddim_cfg(spacing=spacing, eta=0.0, clip_x0=clip))
    ours_s.set_timesteps(20)
    ref = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        solver_order=1,
        algorithm_type="dpmsolver++",
        final_sigmas_type="zero",
        thresholding=clip,
        sample_max_value=1.0,
        prediction_type="epsilon",
    )
    ref.set_timesteps(timesteps=ours_s.timesteps.tolist())
    x = x_T(torch.float32)
    assert_same_trajectory(ours(ours_s, x), theirs(ref, ref.timesteps, x), rtol=2e-4, atol=2e-4)


def test_ddim_eta1_on_all_steps_is_ddpm():
    """η = 1 gives σ_t² = β̃_t, and eq. 12's mean equals the DDPM posterior mean (Song et al. §4.1)."""
    sched = sched_T(100)
    ddim = DDIMSampler.from_config(sched, ddim_cfg(spacing="uniform", eta=1.0, clip_x0=True))
    ddim.set_timesteps(100)
    ddpm = DDPMSampler(sched, "uniform", "fixed_small", True)
    ddpm.set_timesteps(100)
    x = x_T()
    assert_same_trajectory(ours(ddim, x), ours(ddpm, x), rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- DPM-Solver++


@pytest.mark.parametrize("steps,spacing,clip", [(10, "uniform", False), (20, "quadratic", True), (25, "trailing", False)])
def test_dpm_solver_pp_2m_matches_diffusers(steps, spacing, clip):
    """DPM-Solver++(2M) = DPMSolverMultistepScheduler(solver_order=2, midpoint, dpmsolver++) on
    our timesteps. final_sigmas_type='zero' is our last step to ᾱ = 1 (first order, landing on
    x̂_0); diffusers upcasts to float32 internally, so this is a float32 comparison."""
    sched = sched_T()
    ours_s = DPMSolverPPSampler.from_config(sched, SampleConfig(sampler="dpmsolver++", spacing=spacing, clip_x0=clip))
    ours_s.set_timesteps(steps)
    ref = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        solver_order=2,
        algorithm_type="dpmsolver++",
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
        thresholding=clip,
        sample_max_value=1.0,
        prediction_type="epsilon",
    )
    ref.set_timesteps(timesteps=ours_s.timesteps.tolist())
    x = x_T(torch.float32)
    got, want = ours(ours_s, x), theirs(ref, ref.timesteps, x)
    assert_same_trajectory(got, want, rtol=2e-4, atol=2e-4)


def test_dpm_solver_second_order_beats_ddim_at_few_steps():
    """Against a 1000-step DDIM (η = 0) reference of the same ODE, 2M at 15 steps is closer than
    DDIM at 15 steps: the second-order correction is doing something."""
    sched = sched_T()
    x = x_T()
    cfg = dict(spacing="uniform", clip_x0=False)
    ref = DDIMSampler.from_config(sched, ddim_cfg(eta=0.0, **cfg))
    ref.set_timesteps(T)
    x_ref = ours(ref, x)[-1]
    ddim = DDIMSampler.from_config(sched, ddim_cfg(eta=0.0, **cfg))
    ddim.set_timesteps(15)
    dpm = DPMSolverPPSampler.from_config(sched, SampleConfig(sampler="dpmsolver++", **cfg))
    dpm.set_timesteps(15)
    err_ddim = (ours(ddim, x)[-1] - x_ref).abs().max().item()
    err_dpm = (ours(dpm, x)[-1] - x_ref).abs().max().item()
    assert err_dpm < 0.5 * err_ddim, (err_dpm, err_ddim)


def test_dpm_solver_history_resets_between_runs():
    sched = sched_T()
    s = DPMSolverPPSampler.from_config(sched, SampleConfig(sampler="dpmsolver++", clip_x0=False))
    s.set_timesteps(10)
    x = x_T()
    first, second = ours(s, x)[-1], ours(s, x)[-1]
    torch.testing.assert_close(first, second, rtol=0, atol=0)


# ----------------------------------------------------------------------------- registry / loop


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmsolver++"])
def test_make_sampler_runs_any_sampler_through_the_same_loop(name):
    sched = sched_T(100)
    cfg = SampleConfig(sampler=name, steps=10, eta=0.3)
    s = make_sampler(sched, cfg)
    assert isinstance(s, SAMPLERS[name]) and len(s) == 10
    assert s.timesteps.tolist() == sorted(space_timesteps(100, 10, "uniform"), reverse=True)
    g = torch.Generator().manual_seed(0)
    out = sample(stand_in_eps(100), s, SHAPE, generator=g)
    assert out.shape == SHAPE and torch.isfinite(out).all()
    # same seed, same images
    out2 = sample(stand_in_eps(100), s, SHAPE, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, out2, rtol=0, atol=0)


def test_default_steps():
    sched = sched_T(100)
    assert len(make_sampler(sched, SampleConfig(sampler="ddpm"))) == 100
    assert len(make_sampler(sched, SampleConfig(sampler="ddim"))) == 50
    assert len(make_sampler(sched, SampleConfig(sampler="dpmsolver++"))) == 50


def test_deterministic_samplers_ignore_the_generator():
    sched = sched_T(100)
    x = x_T()
    for name in ["ddim", "dpmsolver++"]:
        s = make_sampler(sched, SampleConfig(sampler=name, steps=8, eta=0.0))
        a, b = ours(s, x, seed=1)[-1], ours(s, x, seed=2)[-1]
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert math.isfinite(float(a.abs().max()))
