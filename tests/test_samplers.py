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
    default_spacing,
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
        callback=lambda i, t, xi, x0: traj.append(xi.clone()) if i >= 0 else None,  # i = -1: x_T
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


# diffusers' x̂_0 options for each of ours: clip_sample, thresholding (dynamic: p = 0.995 and no
# upper bound on s, which diffusers' sample_max_value caps)
DIFFUSERS_X0 = {
    "none": dict(clip_sample=False, thresholding=False),
    "clip": dict(clip_sample=True, thresholding=False),
    "clip_eps": dict(clip_sample=True, thresholding=False),
    "dynamic": dict(clip_sample=False, thresholding=True, dynamic_thresholding_ratio=0.995, sample_max_value=1e9),
}


@pytest.mark.parametrize(
    "T_,steps,variance,clip",
    [
        (100, 100, "fixed_small", "clip_eps"),
        (1000, 50, "fixed_small", "none"),
        (1000, 25, "fixed_large", "clip_eps"),
        (1000, 20, "fixed_small", "clip"),
        (1000, 20, "fixed_large", "dynamic"),
    ],
)
def test_ddpm_matches_diffusers_ddpm_scheduler(T_, steps, variance, clip):
    """Respaced ancestral DDPM = DDPMScheduler with our timesteps passed as custom timesteps.

    Both draw z from the same generator in the same order (one randn per step; diffusers skips
    the draw at t = 0, our last step, where neither adds noise), so the noisy paths coincide.
    clip: the x0 mode (clip_eps is the same as clip for DDPM).
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
        prediction_type="epsilon",
        **DIFFUSERS_X0[ours_s.x0],
    )
    ref.set_timesteps(timesteps=ours_s.timesteps.tolist())
    use_float64_table(ref, sched)
    x = x_T()
    assert_same_trajectory(ours(ours_s, x), theirs(ref, ref.timesteps, x), rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- DDIM


def ddim_cfg(**kw) -> SampleConfig:
    return SampleConfig(sampler="ddim", **kw)


@pytest.mark.parametrize(
    "steps,eta,x0,spacing",
    [
        (10, 0.0, "none", "trailing"),
        (50, 0.0, "clip_eps", "trailing"),
        (50, 0.0, "clip", "trailing"),
        (20, 0.5, "clip_eps", "leading"),
        (20, 0.5, "clip", "trailing"),
        (10, 1.0, "none", "leading"),
        (20, 0.0, "dynamic", "trailing"),
    ],
)
def test_ddim_matches_diffusers_ddim_scheduler(steps, eta, x0, spacing):
    """DDIM = DDIMScheduler with the same timestep_spacing, in both of its x̂_0 conventions.

    diffusers' DDIM always steps to t - T//N, so it only takes evenly strided timesteps: with T
    divisible by N, 'trailing' (…, 2T/N-1, T/N-1) and 'leading' (…, T/N, 0) are such sets,
    identical to ours. After the last step both go to ᾱ = 1 (set_alpha_to_one=True). clip keeps
    ε̂ (diffusers' default, use_clipped_model_output=False); clip_eps re-derives ε̂ from the
    clipped x̂_0 (improved-diffusion's choice, use_clipped_model_output=True); dynamic is
    diffusers' thresholding with ε̂ kept.
    """
    sched = sched_T()
    ours_s = DDIMSampler.from_config(sched, ddim_cfg(spacing=spacing, eta=eta, x0=x0))
    ours_s.set_timesteps(steps)
    ref = diffusers.DDIMScheduler(
        num_train_timesteps=T,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        set_alpha_to_one=True,
        timestep_spacing=spacing,
        prediction_type="epsilon",
        **DIFFUSERS_X0[x0],
    )
    ref.set_timesteps(steps)
    assert ref.timesteps.tolist() == ours_s.timesteps.tolist()
    use_float64_table(ref, sched)
    x = x_T()
    got = ours(ours_s, x)
    want = theirs(ref, ref.timesteps, x, eta=eta, use_clipped_model_output=x0 == "clip_eps")
    assert_same_trajectory(got, want, rtol=1e-9, atol=1e-9)


def test_ddim_clip_conventions_differ():
    """The two clipping conventions are different samplers on a network that overshoots [-1, 1]."""
    sched = sched_T()
    x = 3 * x_T()
    ends = {}
    for mode in ("clip", "clip_eps"):
        s = DDIMSampler(sched, "uniform", 0.0, mode)
        s.set_timesteps(10)
        ends[mode] = ours(s, x)[-1]
    assert (ends["clip"] - ends["clip_eps"]).abs().max() > 1e-2


@pytest.mark.parametrize("T_,steps", [(1000, 10), (1000, 50), (1000, 7), (1000, 1000), (100, 30), (4000, 250)])
@pytest.mark.parametrize("spacing,theirs_name", [("uniform", "linspace"), ("leading", "leading"), ("trailing", "trailing")])
def test_spacings_match_diffusers_timestep_spacing(T_, steps, spacing, theirs_name):
    """Each diffusers timestep_spacing (DDPM/DDIM schedulers, steps_offset 0) has its match here."""
    ref = diffusers.DDPMScheduler(num_train_timesteps=T_, timestep_spacing=theirs_name)
    ref.set_timesteps(steps)
    assert sorted(space_timesteps(T_, steps, spacing), reverse=True) == ref.timesteps.tolist()


def test_trailing_starts_at_T_minus_1_and_does_not_reach_0():
    steps = space_timesteps(1000, 10, "trailing")
    assert steps[-1] == 999 and steps[0] == 99
    assert space_timesteps(1000, 10, "uniform")[0] == 0 and space_timesteps(1000, 10, "uniform")[-1] == 999
    assert space_timesteps(1000, 10, "leading") == list(range(0, 1000, 100))


@pytest.mark.parametrize("spacing,clip", [("uniform", False), ("quadratic", True)])
def test_ddim_eta0_is_first_order_dpm_solver_on_any_spacing(spacing, clip):
    """Uneven spacings, which DDIMScheduler cannot take, checked against diffusers' first-order
    DPM-Solver++ (= DDIM with η = 0, Lu et al. 2022b §3) on our timesteps; clipping = its
    thresholding with sample_max_value=1. diffusers computes this in float32."""
    sched = sched_T()
    ours_s = DDIMSampler.from_config(sched, ddim_cfg(spacing=spacing, eta=0.0, x0="clip_eps" if clip else "none"))
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
    ddim = DDIMSampler.from_config(sched, ddim_cfg(spacing="uniform", eta=1.0, x0="clip_eps"))
    ddim.set_timesteps(100)
    ddpm = DDPMSampler(sched, "uniform", "fixed_small", "clip_eps")
    ddpm.set_timesteps(100)
    x = x_T()
    assert_same_trajectory(ours(ddim, x), ours(ddpm, x), rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- DPM-Solver++


@pytest.mark.parametrize(
    "steps,spacing,x0",
    [(10, "uniform", "none"), (20, "quadratic", "clip"), (25, "trailing", "none"), (15, "leading", "dynamic")],
)
def test_dpm_solver_pp_2m_matches_diffusers(steps, spacing, x0):
    """DPM-Solver++(2M) = DPMSolverMultistepScheduler(solver_order=2, midpoint, dpmsolver++) on
    our timesteps. final_sigmas_type='zero' is our last step to ᾱ = 1 (first order, landing on
    x̂_0). diffusers stays second order on a step into t = 0, so ours is set alike for grids that
    visit it (first_order_into_zero=False; the default is checked on the Gaussian fixture).
    diffusers upcasts to float32 internally, so this is a float32 comparison."""
    sched = sched_T()
    ours_s = DPMSolverPPSampler(sched, spacing, x0, first_order_into_zero=False)
    ours_s.set_timesteps(steps)
    x0_kw = dict(DIFFUSERS_X0[x0]) if x0 == "dynamic" else dict(thresholding=x0 != "none", sample_max_value=1.0)
    x0_kw.pop("clip_sample", None)
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
        prediction_type="epsilon",
        **x0_kw,
    )
    ref.set_timesteps(timesteps=ours_s.timesteps.tolist())
    x = x_T(torch.float32)
    got, want = ours(ours_s, x), theirs(ref, ref.timesteps, x)
    assert_same_trajectory(got, want, rtol=2e-4, atol=2e-4)


def test_dpm_solver_steps_into_zero_at_first_order():
    """On a grid that ends at t = 0, the default differs from diffusers only from the step into
    t = 0 on, and that step is the first-order (DDIM) step from the same x."""
    sched = sched_T()
    x = x_T()
    ours_s = DPMSolverPPSampler(sched, "uniform", "none")
    diff_s = DPMSolverPPSampler(sched, "uniform", "none", first_order_into_zero=False)
    ddim = DDIMSampler(sched, "uniform", 0.0, "none")
    for s in (ours_s, diff_s, ddim):
        s.set_timesteps(10)
    a, b = ours(ours_s, x), ours(diff_s, x)
    assert_same_trajectory(a[:8], b[:8], rtol=0, atol=0)
    assert (a[8] - b[8]).abs().max() > 1e-3
    eps = stand_in_eps(T)(a[7], torch.full((SHAPE[0],), int(ours_s.timesteps[8])))
    want = ddim.step(eps, 8, a[7]).prev_sample
    torch.testing.assert_close(a[8], want, rtol=1e-12, atol=1e-12)


def test_dpm_solver_history_resets_between_runs():
    sched = sched_T()
    s = DPMSolverPPSampler.from_config(sched, SampleConfig(sampler="dpmsolver++", clip_x0=False))
    s.set_timesteps(10)
    x = x_T()
    first, second = ours(s, x)[-1], ours(s, x)[-1]
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_one_sampler_object_serves_interleaved_runs():
    """The multistep history lives in each run's state, not on the sampler: two runs stepped in
    turn through one DPM-Solver++ object give what each gives alone."""
    sched = sched_T()
    s = DPMSolverPPSampler(sched, "uniform", "none")
    s.set_timesteps(10)
    eps_fn = stand_in_eps(T)
    xa, xb = x_T(), -0.5 * x_T()
    alone_a, alone_b = ours(s, xa)[-1], ours(s, xb)[-1]
    state_a, state_b = s.new_state(), s.new_state()
    for i, t in enumerate(s.timesteps.tolist()):
        tt = torch.full((SHAPE[0],), t)
        xa = s.step(eps_fn(xa, tt), i, xa, None, state_a).prev_sample
        xb = s.step(eps_fn(xb, tt), i, xb, None, state_b).prev_sample
    torch.testing.assert_close(xa, alone_a, rtol=0, atol=0)
    torch.testing.assert_close(xb, alone_b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="state"):
        s.step(eps_fn(xa, tt), 1, xa)


# ----------------------------------------------------------------------------- registry / loop


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmsolver++"])
def test_make_sampler_runs_any_sampler_through_the_same_loop(name):
    sched = sched_T(100)
    cfg = SampleConfig(sampler=name, steps=10, eta=0.3)
    s = make_sampler(sched, cfg)
    assert isinstance(s, SAMPLERS[name]) and len(s) == 10
    assert s.timesteps.tolist() == sorted(space_timesteps(100, 10, default_spacing(name)), reverse=True)
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


def test_sample_config_x0_and_the_old_clip_x0_flag():
    """x0 names the x̂_0 handling; clip_x0 (stored in older checkpoints) still loads and, when given,
    decides (True was DDIM's clip-and-recompute-ε), so `--set sample.clip_x0=false` still works."""
    assert SampleConfig().x0 is None and SampleConfig().clip_x0  # None: each sampler's default
    for name, cls in SAMPLERS.items():  # the default is the sampler's own, and a clamping one
        assert make_sampler(sched_T(100), SampleConfig(sampler=name, steps=5)).x0 == cls.default_x0 != "none"
    assert SampleConfig(clip_x0=False).x0 == "none" and not SampleConfig(clip_x0=False).clip_x0
    assert SampleConfig.model_validate({"clip_x0": True, "spacing": "uniform"}).x0 == "clip_eps"
    stored = SampleConfig(x0="dynamic").model_dump()
    assert "clip_x0" not in stored and SampleConfig.model_validate(stored).x0 == "dynamic"
    assert SampleConfig.model_validate({**stored, "clip_x0": False}).x0 == "none"
    with pytest.raises(ValueError, match="clip_x0"):
        SampleConfig.model_validate({"clip_x0": "maybe"})
    with pytest.raises(ValueError):
        SampleConfig(x0="clamp")
    s = make_sampler(sched_T(100), SampleConfig(sampler="ddim", steps=5, clip_x0=False))
    assert s.x0 == "none" and s.spacing == default_spacing("ddim")
