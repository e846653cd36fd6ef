"""Every sampler on data whose answer is known exactly (tests/analytic_gaussian.py).

With x_0 ~ N(μ, s²) the optimal ε-predictor ε* is known in closed form, so a sampler run with it
has no network error left: deterministic samplers are compared with the exact probability-flow
ODE map of their own x_T, stochastic ones with the exact data distribution. The bounds below are
what each sampler reaches on the default schedule (linear β, T = 1000), measured with ~10% to
spare: benchmarks/bench_sampler_accuracy.py prints the full table.
"""

from __future__ import annotations

import math

import pytest
import torch

from analytic_gaussian import GaussianData, x_T
from ddpmkit.diffusion import q_sample, training_loss
from ddpmkit.samplers import DDIMSampler, DDPMSampler, DPMSolverPPSampler, Sampler, default_spacing, sample
from ddpmkit.schedule import NoiseSchedule, linear_betas

T = 1000
SHAPE = (3, 4, 4)
N_DET = 256  # starts per deterministic run: the error is the largest over 256 x 48 elements


@pytest.fixture(scope="module")
def sched() -> NoiseSchedule:
    return NoiseSchedule.from_betas(linear_betas(T))


@pytest.fixture(scope="module")
def data(sched) -> GaussianData:
    return GaussianData.standard(sched, SHAPE)


def ode_error(data: GaussianData, sampler: Sampler, steps: int) -> float:
    """Largest per-element error of the sampler's x_0 against the exact ODE map of its x_T,
    taken from T-1 (so a grid that starts later pays for starting from the wrong noise level)."""
    sampler.set_timesteps(steps)
    x = x_T(N_DET, SHAPE)
    out = sample(data.eps, sampler, x.shape, x_T=x)
    exact = data.ode_map(x, data.start_alpha_bar(T - 1))
    return (out - exact).abs().max().item()


def ddim(sched, spacing=None) -> DDIMSampler:
    return DDIMSampler(sched, spacing, 0.0, "none")


def dpm(sched, spacing=None, **kw) -> DPMSolverPPSampler:
    return DPMSolverPPSampler(sched, spacing, "none", **kw)


# ----------------------------------------------------------------------------- the fixture itself


def test_fixture_eps_is_the_optimal_predictor(sched, data):
    """ε* is E[ε | x_t]: the training loss is smallest there, and the marginal of x_t is exact."""
    g = torch.Generator().manual_seed(0)
    n = 20_000
    x0 = data.mu + data.s * torch.randn((n, *SHAPE), generator=g, dtype=torch.float64)
    noise = torch.randn((n, *SHAPE), generator=g, dtype=torch.float64)
    t = torch.full((n,), 300)
    a = float(sched.alphas_cumprod[300])
    mean, std = data.marginal(a)
    xt = q_sample(sched, x0, t, noise)
    assert (xt.mean(0) - mean).abs().max() < 5 * std.max() / math.sqrt(n)
    assert ((xt.std(0) / std) - 1).abs().max() < 0.05
    best = training_loss(data.eps, sched, x0, t, noise).item()
    for worse in (lambda x, tt: 1.05 * data.eps(x, tt), lambda x, tt: data.eps(x, tt) + 0.02):
        assert training_loss(worse, sched, x0, t, noise).item() > best


def test_fixture_ode_map_composes_and_moves_marginals(data):
    x = x_T(8, SHAPE)
    direct = data.ode_map(x, 0.01, 1.0)
    via = data.ode_map(data.ode_map(x, 0.01, 0.5), 0.5, 1.0)
    torch.testing.assert_close(direct, via, rtol=1e-12, atol=1e-12)
    m_a, sd_a = data.marginal(0.01)
    m_b, sd_b = data.marginal(0.5)
    torch.testing.assert_close(data.ode_map(m_a + sd_a, 0.01, 0.5), m_b + sd_b, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- deterministic samplers


# the largest error each reaches with its default spacing (trailing): what docs/samplers.md quotes
BOUNDS = {
    "ddim": {5: 1.02, 10: 0.60, 15: 0.42, 20: 0.32, 25: 0.26, 50: 0.135, 1000: 0.0075},
    "dpmsolver++": {5: 1.01, 10: 0.53, 15: 0.30, 20: 0.215, 25: 0.175, 50: 0.085, 200: 0.02},
}


@pytest.mark.parametrize("name", ["ddim", "dpmsolver++"])
def test_deterministic_samplers_reach_their_bounds(sched, data, name):
    make = ddim if name == "ddim" else dpm
    for steps, bound in BOUNDS[name].items():
        err = ode_error(data, make(sched), steps)
        assert err < bound, (name, steps, err)


def test_dpm_solver_beats_ddim_at_every_step_count_from_5_to_50(sched, data):
    """Each with its default spacing, and both on uniform too (where DPM-Solver++ steps into t = 0)."""
    assert default_spacing("ddim") == default_spacing("dpmsolver++") == "trailing"
    for spacing in (None, "uniform"):
        for steps in range(5, 51):
            e_dpm, e_ddim = ode_error(data, dpm(sched, spacing), steps), ode_error(data, ddim(sched, spacing), steps)
            assert e_dpm < e_ddim, (spacing, steps, e_dpm, e_ddim)


def test_second_order_into_t0_was_the_bug(sched, data):
    """A second-order step into t = 0 (diffusers' choice, ddpmkit's before) overshoots: it is worse
    than DDIM at 15-25 steps, and 1.5x+ worse than the first-order step there."""
    for steps in (15, 20, 25):
        old = ode_error(data, dpm(sched, "uniform", first_order_into_zero=False), steps)
        assert old > ode_error(data, ddim(sched, "uniform"), steps)
        assert old > 1.5 * ode_error(data, dpm(sched, "uniform"), steps)


def test_dpm_solver_converges_faster_than_ddim(sched, data):
    """Doubling the steps shrinks DDIM's error by about 2 (first order) and DPM-Solver++'s by more
    (on uniform, whose last step starts at t = 0: on trailing the final jump to x̂_0 from T/N - 1,
    first order for both, hides the order)."""
    r_ddim = ode_error(data, ddim(sched, "uniform"), 50) / ode_error(data, ddim(sched, "uniform"), 25)
    r_dpm = ode_error(data, dpm(sched, "uniform"), 50) / ode_error(data, dpm(sched, "uniform"), 25)
    assert 0.4 < r_ddim < 0.6
    assert r_dpm < 0.45


# ----------------------------------------------------------------------------- stochastic samplers


# (sampler, steps) -> the largest |mean error| and |std error| of x_0 over the elements, in units
# of the data's s (z-scores), from 4,096 samples (so about 0.04 of it is sampling noise). DDPM's
# σ² = β̃ (fixed_small) is the posterior variance given x_0, smaller than the true reverse
# variance, so the narrowest elements come out too narrow; fewer steps widen that gap.
# fixed_large (σ² = β) errs the other way, less.
STOCHASTIC = [
    (lambda s: DDPMSampler(s, None, "fixed_small", "none"), T, 0.08, 0.08),
    (lambda s: DDPMSampler(s, None, "fixed_large", "none"), T, 0.08, 0.05),
    (lambda s: DDPMSampler(s, None, "fixed_small", "none"), 250, 0.08, 0.15),
    (lambda s: DDPMSampler(s, None, "fixed_large", "none"), 250, 0.08, 0.06),
    (lambda s: DDIMSampler(s, None, 1.0, "none"), 100, 0.08, 0.28),
    (lambda s: DDIMSampler(s, None, 0.5, "none"), 100, 0.08, 0.22),
]


@pytest.mark.parametrize("case", range(len(STOCHASTIC)))
def test_stochastic_samplers_reach_the_data_distribution(sched, case):
    make, steps, mean_tol, std_tol = STOCHASTIC[case]
    data = GaussianData.standard(sched, (3, 2, 2), seed=1)
    n = 4096  # the mean's standard error is 1/64 of s per element
    s = make(sched)
    s.set_timesteps(steps)
    out = sample(data.eps, s, (n, 3, 2, 2), generator=torch.Generator().manual_seed(case), x_T=x_T(n, (3, 2, 2), case))
    z = (out - data.mu) / data.s
    assert z.mean(0).abs().max() < mean_tol
    assert (z.std(0) - 1).abs().max() < std_tol
