"""Training-recipe settings: v-prediction, min-SNR-γ loss weighting, the power-function EMA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from analytic_gaussian import GaussianData, x_T
from conftest import tiny
from ddpmkit.checkpoint import load_model, settings_of
from ddpmkit.cli.app import app
from ddpmkit.diffusion import (
    eps_from_output, eps_from_v, loss_weights, predict_v, q_sample, training_loss, v_from_eps,
)
from ddpmkit.generate import Denoiser, eps_fn, generate
from ddpmkit.images import to_uint8
from ddpmkit.samplers import make_sampler, sample
from ddpmkit.schedule import NoiseSchedule, cosine_betas, linear_betas
from ddpmkit.settings import SampleConfig, build_settings
from ddpmkit.train import train
from ddpmkit.train.ema import EMA, power_gamma
from ddpmkit.train.periodic import PreviewGrids

CPU = torch.device("cpu")


def _scheds() -> list[NoiseSchedule]:
    return [NoiseSchedule.from_betas(linear_betas(1000)), NoiseSchedule.from_betas(cosine_betas(1000))]


def _batch(seed: int = 0, n: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand((n, 3, 4, 4), generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn((n, 3, 4, 4), generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 250, 500, 998, 999])[:n]
    return x0, noise, t


# ----------------------------------------------------------------------------- v-prediction


@pytest.mark.parametrize("sched", _scheds(), ids=["linear", "cosine"])
def test_v_target_and_its_conversion_to_eps_are_exact(sched):
    x0, noise, t = _batch()
    xt = q_sample(sched, x0, t, noise)
    v = predict_v(sched, x0, t, noise)
    a = sched.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    torch.testing.assert_close(v, a.sqrt() * noise - (1 - a).sqrt() * x0, rtol=0, atol=1e-15)
    # the true v gives back the true ε at every t, from t = 0 to the noisiest step
    torch.testing.assert_close(eps_from_v(sched, xt, t, v), noise, rtol=0, atol=1e-12)
    # ε -> v -> ε for any ε (not only the true one)
    eps = torch.randn(x0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(eps_from_v(sched, xt, t, v_from_eps(sched, xt, t, eps)), eps, rtol=0, atol=1e-9)
    assert eps_from_output(sched, xt, t, eps, "eps") is eps
    with pytest.raises(ValueError, match="prediction"):
        eps_from_output(sched, xt, t, eps, "x0")  # type: ignore[arg-type]


def test_v_loss_regresses_the_network_onto_v():
    sched = _scheds()[0]
    x0, noise, t = _batch()
    x0, noise = x0.float(), noise.float()
    v_true = predict_v(sched, x0, t, noise)
    oracle = lambda xt, tt: v_true  # noqa: E731  (the exact v of this batch)
    assert training_loss(oracle, sched, x0, t, noise, "v").item() < 1e-10
    zero = lambda xt, tt: torch.zeros_like(xt)  # noqa: E731
    assert training_loss(zero, sched, x0, t, noise, "v").item() == pytest.approx(v_true.pow(2).mean().item())
    # the ε loss of the same zero network is E[ε²]: the two targets differ
    assert training_loss(zero, sched, x0, t, noise).item() == pytest.approx(noise.pow(2).mean().item())


def test_a_v_network_samples_like_the_eps_network_it_stands_for():
    """The exact ε* of Gaussian data, written as a v-network, sampled through eps_fn: every
    sampler must see the same ε and give the same images."""
    sched = NoiseSchedule.from_betas(linear_betas(200))
    data = GaussianData.standard(sched)

    class VNet(torch.nn.Module):
        def forward(self, x, t):
            return v_from_eps(sched, x, t, data.eps(x, t))

    as_eps = eps_fn(VNet(), CPU, "fp32", prediction="v", sched=sched)
    start = x_T(3, (3, 4, 4)).float()
    for name in ("ddim", "ddpm", "dpmsolver++"):
        cfg = SampleConfig(sampler=name, steps=10, x0="none")
        run = lambda eps: sample(eps, make_sampler(sched, cfg), (3, 3, 4, 4), x_T=start,  # noqa: E731
                                 generator=torch.Generator().manual_seed(0))
        want, got = run(data.eps), run(as_eps)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(TypeError, match="sched"):
        eps_fn(VNet(), CPU, prediction="v")  # type: ignore[call-arg]


def test_a_v_trained_model_trains_and_samples_through_the_cli(tmp_path):
    s = tiny(tmp_path / "run", diffusion={"prediction": "v"},
             train={"max_steps": 3, "sample_every": 3, "num_samples": 2})
    result = train(s, log=lambda m: None, progress=False)
    assert np.isfinite(result.last_loss)
    model, settings, _ = load_model(tmp_path / "run", CPU)
    assert settings.diffusion.prediction == "v"
    # the run's preview grid was drawn from the v-network as an ε-network
    preview = PreviewGrids.make(Denoiser.for_settings(model, settings, CPU, "fp32"), settings.sample, n=2,
                                seed=s.train.seed, out_dir=tmp_path / "preview", shape=(3, 16, 16))
    assert preview(model, 3).read_bytes() == (tmp_path / "run" / "samples" / "step_00000003.png").read_bytes()
    r = CliRunner().invoke(app, ["sample", str(tmp_path / "run"), "--n", "2", "--sampler", "ddim", "--steps", "5",
                                 "--out", str(tmp_path / "out")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    got = [np.asarray(Image.open(tmp_path / "out" / "images" / f"sample_0000{i}.png")) for i in range(2)]
    sched = NoiseSchedule.from_config(settings.diffusion)
    cfg = settings.sample.model_copy(update={"sampler": "ddim", "steps": 5})

    def images(prediction: str) -> np.ndarray:
        e = eps_fn(model, CPU, prediction=prediction, sched=sched)
        x = torch.cat(list(generate(e, make_sampler(sched, cfg), 2, (3, 16, 16), seed=0, batch_size=2, device=CPU)))
        return to_uint8(x).permute(0, 2, 3, 1).numpy()

    want, as_eps = images("v"), images("eps")
    assert all(np.array_equal(g, w) for g, w in zip(got, want))  # the CLI converts v to ε
    assert not np.array_equal(want, as_eps)


# ----------------------------------------------------------------------------- min-SNR-γ


@pytest.mark.parametrize("sched", _scheds(), ids=["linear", "cosine"])
def test_min_snr_weights_follow_the_formula(sched):
    t = torch.tensor([0, 10, 100, 300, 600, 999])
    gamma = 5.0
    for i, ti in enumerate(t.tolist()):
        a = float(sched.alphas_cumprod[ti])
        r = a / (1 - a)
        want_eps, want_v = min(r, gamma) / r, min(r, gamma) / (r + 1)
        assert float(loss_weights(sched, t, "min_snr", "eps", gamma)[i]) == pytest.approx(want_eps, rel=1e-12)
        assert float(loss_weights(sched, t, "min_snr", "v", gamma)[i]) == pytest.approx(want_v, rel=1e-12)
    assert torch.equal(loss_weights(sched, t, "uniform", "eps"), torch.ones(6, dtype=torch.float64))
    # noisy steps (SNR < γ) keep ε's full weight; clean ones are scaled down by γ/SNR
    w = loss_weights(sched, t, "min_snr", "eps", gamma)
    assert w[-1] == 1.0 and w[0] < 1e-2


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_min_snr_loss_weights_each_sample_mean(prediction):
    sched = _scheds()[0]
    x0, noise, t = _batch()
    x0, noise = x0.float(), noise.float()
    net = lambda xt, tt: 0.5 * xt  # noqa: E731
    target = noise if prediction == "eps" else predict_v(sched, x0, t, noise)
    per_sample = (net(q_sample(sched, x0, t, noise), t) - target).square().mean(dim=(1, 2, 3))
    w = loss_weights(sched, t, "min_snr", prediction, 2.0).float()
    got = training_loss(net, sched, x0, t, noise, prediction, "min_snr", 2.0)
    assert got.dtype == torch.float32 and got.item() == pytest.approx((w * per_sample).mean().item(), rel=1e-6)
    uniform = training_loss(net, sched, x0, t, noise, prediction)
    assert uniform.item() == pytest.approx(per_sample.mean().item(), rel=1e-6)
    assert abs(got.item() - uniform.item()) > 1e-3


def test_the_trainer_uses_the_loss_weighting(tmp_path):
    def first_loss(name: str, **train_kw) -> float:
        s = tiny(tmp_path / name, train={"max_steps": 1, **train_kw})
        return train(s, log=lambda m: None, progress=False).history[0]["loss"]

    uniform, weighted = first_loss("u"), first_loss("w", loss_weight="min_snr", min_snr_gamma=1.0)
    assert weighted < uniform  # the same first batch, its clean samples weighted down
    # the checkpoint keeps the new keys (state.pt and the weights' metadata) and inspect lists them
    ckpt = tmp_path / "w" / "checkpoints" / "step_00000001"
    for saved in (load_model(tmp_path / "w", CPU)[1], settings_of(ckpt / "ema.safetensors")):
        assert (saved.train.loss_weight, saved.train.min_snr_gamma) == ("min_snr", 1.0)
    out = CliRunner().invoke(app, ["inspect", str(ckpt)], catch_exceptions=False, env={"COLUMNS": "200"}).output
    assert "train.loss_weight" in out and "min_snr" in out and "diffusion.prediction" in out


def test_the_paper_presets_keep_the_ddpm_recipe():
    """celeba64 reproduces the DDIM paper: ε-prediction, L_simple, an exponential EMA."""
    s = build_settings(preset="celeba64")
    assert (s.diffusion.prediction, s.train.loss_weight, s.train.ema) == ("eps", "uniform", "exponential")
    assert (s.diffusion.schedule, s.train.ema_decay) == ("linear", 0.9999)


# ----------------------------------------------------------------------------- power-function EMA


@pytest.mark.parametrize("std", [0.05, 0.10, 0.20])
def test_power_gamma_gives_the_asked_width(std):
    g = power_gamma(std)
    assert ((g + 1) / ((g + 2) ** 2 * (g + 3))) ** 0.5 == pytest.approx(std, rel=1e-9)
    assert power_gamma(0.10) == pytest.approx(6.94, abs=0.01) and power_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    with pytest.raises(ValueError, match="ema_std"):
        power_gamma(0.3)


class _OneHot(torch.nn.Module):
    """θ as a vector: step τ sets θ = e_τ, so the EMA holds each step's averaging weight."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(torch.full((n,), 7.0, dtype=torch.float64))


@pytest.mark.parametrize("std", [0.05, 0.15])
def test_power_ema_weights_match_the_formula(std):
    n = 40
    model = _OneHot(n)
    ema = EMA(model, kind="power", std=std)
    g = ema.gamma
    for tau in range(1, n + 1):
        with torch.no_grad():
            model.theta.zero_()
            model.theta[tau - 1] = 1.0
        ema.update(model)
        if tau in (1, 2, 10, n):
            t = torch.arange(1, tau + 1, dtype=torch.float64)
            want = (t ** (g + 1) - (t - 1) ** (g + 1)) / float(tau) ** (g + 1)
            got = ema.model.theta.detach()
            torch.testing.assert_close(got[:tau], want, rtol=1e-10, atol=1e-12)
            assert torch.all(got[tau:] == 0)  # the initial 7s are forgotten at the first update
            assert float(got.sum()) == pytest.approx(1.0, abs=1e-12)
    # the exponential EMA (no warm-up) is untouched: weight (1-d) d^(t-τ)
    exp = EMA(_OneHot(3), decay=0.5, warmup=False)
    assert exp.current_decay() == 0.5 and exp.gamma is None


def test_power_ema_resumes_as_the_uninterrupted_run(tmp_path):
    def run(name: str, stop: int | None = None) -> dict:
        s = tiny(tmp_path / name, train={"max_steps": 6, "ema": "power", "ema_std": 0.2})
        on_step = [lambda tr: tr.request_stop() if tr.step == stop else None] if stop else []
        train(s, log=lambda m: None, progress=False, on_step=on_step)
        if stop:
            train(s, log=lambda m: None, progress=False, resume=True)
        from safetensors.torch import load_file

        return load_file(tmp_path / name / "checkpoints" / "step_00000006" / "ema.safetensors")

    full, resumed = run("full"), run("part", stop=3)
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    state = torch.load(tmp_path / "part" / "checkpoints" / "step_00000006" / "state.pt", weights_only=True)
    assert state["ema_updates"] == 6
    model, settings, _ = load_model(tmp_path / "part", CPU)
    assert (settings.train.ema, settings.train.ema_std) == ("power", 0.2)


def test_a_run_cannot_resume_as_another_prediction():
    from ddpmkit.train.state import architecture_change

    eps_run = build_settings(preset="demo", overrides={"diffusion": {"prediction": "eps"}})
    v_run = build_settings(preset="demo", overrides={"diffusion": {"prediction": "v"}})
    assert architecture_change(eps_run, v_run) == "diffusion.prediction (eps in the run, v asked)"
    # the loss weighting and the EMA are training choices: they may change on resume
    other = build_settings(preset="demo", overrides={"diffusion": {"prediction": "eps"},
                                                      "train": {"loss_weight": "uniform", "ema": "power"}})
    assert architecture_change(eps_run, other) is None
