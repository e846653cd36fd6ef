"""The schedule and the forward/posterior math against their definitions."""

from __future__ import annotations

import math

import pytest
import torch

import numpy as np

from ddpmkit.diffusion import (
    dynamic_threshold,
    eps_from_x0,
    p_mean_variance,
    predict_x0_from_eps,
    q_posterior,
    q_sample,
    sample_timesteps,
    training_loss,
    x0_and_eps,
    x0_from_eps,
)
from ddpmkit.schedule import NoiseSchedule, cosine_betas, linear_betas

T = 1000


@pytest.fixture(scope="module", params=["linear", "cosine"])
def sched(request) -> NoiseSchedule:
    betas = linear_betas(T) if request.param == "linear" else cosine_betas(T)
    return NoiseSchedule.from_betas(betas)


def test_linear_betas_endpoints():
    b = linear_betas(T, 1e-4, 0.02)
    assert b.dtype == torch.float64
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)


def test_cosine_alpha_bar_follows_the_closed_form():
    s = NoiseSchedule.from_betas(cosine_betas(T))
    t = torch.arange(1, T + 1, dtype=torch.float64)
    f = lambda u: torch.cos((u / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    expected = f(t) / f(torch.zeros(1, dtype=torch.float64))
    # equal until β is clipped at 0.999 in the last steps
    assert torch.allclose(s.alphas_cumprod[:-5], expected[:-5], rtol=1e-10, atol=1e-12)


def test_alpha_bar_is_the_running_product(sched):
    running, prods = 1.0, []
    for beta in sched.betas.tolist():
        running *= 1.0 - beta
        prods.append(running)
    assert torch.allclose(sched.alphas_cumprod, torch.tensor(prods, dtype=torch.float64), rtol=1e-12)
    assert sched.alphas_cumprod_prev[0] == 1.0
    assert torch.equal(sched.alphas_cumprod_prev[1:], sched.alphas_cumprod[:-1])


@pytest.mark.parametrize("t", [0, 10, 400])
def test_q_sample_matches_running_the_chain_step_by_step(t):
    """x_t from eq. 4 in one jump has the moments of t+1 single steps of q(x_s | x_{s-1})."""
    sched = NoiseSchedule.from_betas(linear_betas(T))
    g = torch.Generator().manual_seed(t)
    n = 10_000
    x0 = torch.full((n,), 0.7, dtype=torch.float64)
    x = x0.clone()
    for s in range(t + 1):
        beta = sched.betas[s]
        x = torch.sqrt(1 - beta) * x + torch.sqrt(beta) * torch.randn(n, generator=g, dtype=torch.float64)
    jump = q_sample(
        sched,
        x0.view(n, 1, 1, 1),
        torch.full((n,), t, dtype=torch.long),
        torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64),
    ).flatten()
    mean_expected = math.sqrt(sched.alphas_cumprod[t]) * 0.7
    std_expected = math.sqrt(1 - sched.alphas_cumprod[t])
    tol = 5 * std_expected / math.sqrt(n)
    for samples in (x, jump):
        assert samples.mean().item() == pytest.approx(mean_expected, abs=tol)
        assert samples.std().item() == pytest.approx(std_expected, rel=0.03)


@pytest.mark.parametrize("t", [1, 5, 100, 998])
def test_posterior_is_bayes_rule(sched, t):
    """q(x_{t-1}|x_t,x_0) ∝ N(x_t; √α_t x_{t-1}, β_t) · N(x_{t-1}; √ᾱ_{t-1} x_0, 1-ᾱ_{t-1})."""
    a, b = sched.alphas[t], sched.betas[t]
    ab_prev = sched.alphas_cumprod_prev[t]
    precision = a / b + 1 / (1 - ab_prev)
    x0 = torch.tensor([0.3, -0.8], dtype=torch.float64).view(2, 1, 1, 1)
    xt = torch.tensor([1.1, 0.2], dtype=torch.float64).view(2, 1, 1, 1)
    mean_bayes = (a.sqrt() * xt / b + ab_prev.sqrt() * x0 / (1 - ab_prev)) / precision
    mean, var, log_var = q_posterior(sched, x0, xt, torch.tensor([t, t]))
    assert torch.allclose(mean, mean_bayes, rtol=1e-9)
    assert torch.allclose(var.flatten(), (1 / precision).expand(2), rtol=1e-9)
    assert torch.allclose(log_var.flatten(), torch.log(1 / precision).expand(2), rtol=1e-9)


def test_posterior_by_simulation():
    """Regress sampled x_{t-1} on x_t (x_0 fixed): slope and residual variance are coef2 and β̃_t."""
    sched = NoiseSchedule.from_betas(linear_betas(T))
    t, n = 300, 200_000
    g = torch.Generator().manual_seed(0)
    x0 = 0.5
    x_prev = math.sqrt(sched.alphas_cumprod[t - 1]) * x0 + math.sqrt(1 - sched.alphas_cumprod[t - 1]) * torch.randn(
        n, generator=g, dtype=torch.float64
    )
    x_t = sched.alphas[t].sqrt() * x_prev + sched.betas[t].sqrt() * torch.randn(n, generator=g, dtype=torch.float64)
    cov = torch.cov(torch.stack([x_t, x_prev]))
    slope = cov[0, 1] / cov[0, 0]
    resid_var = cov[1, 1] - slope * cov[0, 1]
    assert slope.item() == pytest.approx(sched.posterior_mean_coef2[t].item(), rel=0.01)
    assert resid_var.item() == pytest.approx(sched.posterior_variance[t].item(), rel=0.01)


def test_x0_eps_round_trip(sched):
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 990])
    xt = q_sample(sched, x0, t, eps)
    assert torch.allclose(predict_x0_from_eps(sched, xt, t, eps), x0, atol=1e-6)
    alpha_bar = sched.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    assert torch.allclose(eps_from_x0(xt, x0, alpha_bar), eps, atol=1e-6)


def test_reverse_mean_with_true_eps_is_the_posterior_mean():
    sched = NoiseSchedule.from_betas(linear_betas(T))
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64) * 1.8 - 0.9
    eps = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 50, 700])
    xt = q_sample(sched, x0, t, eps)
    mean, log_var, x0_hat = p_mean_variance(sched, xt, t, eps, "fixed_small", x0_mode="none")
    post_mean, _, post_log_var = q_posterior(sched, x0, xt, t)
    assert torch.allclose(mean, post_mean, atol=1e-8)
    assert torch.allclose(log_var, post_log_var)
    _, log_var_large, _ = p_mean_variance(sched, xt, t, eps, "fixed_large", x0_mode="none")
    assert torch.allclose(log_var_large.flatten(), torch.log(sched.betas[t]))


def test_training_loss_is_zero_for_a_perfect_eps_model():
    sched = NoiseSchedule.from_betas(linear_betas(T))
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(8, 3, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(8, 3, 4, 4, generator=g)
    t = torch.randint(0, T, (8,), generator=g)
    oracle = lambda xt, tt: eps_from_x0(xt, x0, sched.alphas_cumprod[tt].reshape(-1, 1, 1, 1))  # noqa: E731
    assert training_loss(oracle, sched, x0, t, noise).item() < 1e-6
    zero = lambda xt, tt: torch.zeros_like(xt)  # noqa: E731
    assert training_loss(zero, sched, x0, t, noise).item() == pytest.approx(noise.pow(2).mean().item())


# ----------------------------------------------------------------------------- x̂_0 handling


def test_float_alpha_bar_conversions_match_the_schedule_ones(sched):
    """x0_from_eps / eps_from_x0 with ᾱ as a number or a 0-dim tensor = the table versions."""
    g = torch.Generator().manual_seed(4)
    xt = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    for t in (0, 300, 999):
        tt = torch.full((2,), t)
        a = sched.alphas_cumprod[t]
        for alpha_bar in (float(a), a):
            x0 = x0_from_eps(xt, eps, alpha_bar)
            assert torch.allclose(x0, predict_x0_from_eps(sched, xt, tt, eps), rtol=1e-10, atol=1e-10)
            assert torch.allclose(eps_from_x0(xt, x0, alpha_bar), eps, rtol=1e-8, atol=1e-8)


def test_dynamic_threshold_is_its_definition():
    """Saharia et al. (2022): s = max(1, 99.5th percentile of |x̂_0| per image); clamp to [-s, s], divide by s."""
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64) * torch.tensor([0.3, 1.5, 4.0, 0.9]).view(4, 1, 1, 1)
    out = dynamic_threshold(x0)
    for b in range(4):
        v = x0[b].numpy()
        s = max(1.0, float(np.percentile(np.abs(v), 99.5)))  # numpy's default: linear interpolation
        want = np.clip(v, -s, s) / s
        np.testing.assert_allclose(out[b].numpy(), want, rtol=1e-12, atol=1e-12)
    assert torch.equal(out[0], x0[0])  # inside [-1, 1]: untouched
    assert out.abs().max() <= 1.0
    # a saturated image keeps its shape: values are scaled, not cut at ±1 like clipping
    assert (out[2].abs() == 1.0).float().mean() < (x0[2].clamp(-1, 1).abs() == 1.0).float().mean()


def test_x0_modes():
    """none keeps both; clip clamps x̂_0 and keeps ε̂; clip_eps makes ε̂ agree with the clamped x̂_0;
    dynamic thresholds x̂_0 and keeps ε̂."""
    g = torch.Generator().manual_seed(6)
    xt = 2 * torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    a = 0.3
    raw = x0_from_eps(xt, eps, a)
    assert raw.abs().max() > 1
    x0, e = x0_and_eps(xt, eps, a, "none")
    assert torch.equal(x0, raw) and torch.equal(e, eps)
    x0, e = x0_and_eps(xt, eps, a, "clip")
    assert torch.equal(x0, raw.clamp(-1, 1)) and torch.equal(e, eps)
    x0, e = x0_and_eps(xt, eps, a, "clip_eps")
    assert torch.equal(x0, raw.clamp(-1, 1)) and not torch.equal(e, eps)
    assert torch.allclose(x0_from_eps(xt, e, a), x0, atol=1e-12)
    x0, e = x0_and_eps(xt, eps, a, "dynamic")
    assert torch.equal(x0, dynamic_threshold(raw)) and torch.equal(e, eps)
    with pytest.raises(ValueError, match="x0 mode"):
        x0_and_eps(xt, eps, a, "clamp")


def test_sample_timesteps_uses_the_generator():
    a = sample_timesteps(64, T, torch.device("cpu"), torch.Generator().manual_seed(0))
    b = sample_timesteps(64, T, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.dtype == torch.long and 0 <= a.min() and a.max() < T
