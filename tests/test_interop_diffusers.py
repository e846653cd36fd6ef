"""ddpmkit's U-Net and schedule against diffusers' UNet2DModel and schedulers, and `ddpmkit export`.

The networks are compared on random inputs with random weights (every tensor perturbed, so no
zero-initialised layer hides a wrong name or layout); diffusers is the independent implementation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import diffusers  # a test-only dependency: pyproject [test]
from ddpmkit.checkpoint import load_model, save_checkpoint
from ddpmkit.cli.app import app
from ddpmkit.generate import eps_fn
from ddpmkit.interop.diffusers_schedule import diffusion_settings, scheduler_config
from ddpmkit.interop.diffusers_unet import (diffusers_shapes, from_diffusers, model_settings, rename_legacy,
                                            to_diffusers, unet2d_config)
from ddpmkit.nn import UNet, count_parameters
from ddpmkit.samplers import sample
from ddpmkit.samplers.ddim import DDIMSampler
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.settings import Settings, build_settings

from conftest import tiny
from interop_helpers import assert_same_output, randomised

runner = CliRunner()
# diffusers' own UNet2DModel conventions, each a ddpmkit option (the defaults are DDPM's)
DIFFUSERS_CONVENTIONS = {"temb_cos_first": True, "temb_freq_shift": 0.0, "downsample_pad": "all_sides",
                         "norm_eps": 1e-5, "head_channels": 8}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)




def as_diffusers(cfg, state: dict[str, torch.Tensor]) -> "diffusers.UNet2DModel":
    theirs = diffusers.UNet2DModel.from_config(unet2d_config(cfg)).eval()
    theirs.load_state_dict(to_diffusers(state, len(cfg.ch_mult)), strict=True)
    return theirs




def preset_model(preset: str, **change):
    return build_settings(preset=preset).model.model_copy(update=change)


# ----------------------------------------------------------------------------- the networks


@pytest.mark.parametrize("preset, change", [
    ("demo", {}), ("celeba32", {}),
    ("celeba64", {"ch": 32}),  # the DDIM CelebA-64 network at a quarter of its widths, same blocks
    ("celeba128", {"ch": 32}),  # DDPM's 6-level network at 128 px, a quarter of its widths
])
def test_unet_output_equals_diffusers(preset, change):
    cfg = preset_model(preset, **change)
    ours = randomised(UNet.from_config(cfg))
    assert_same_output(ours, as_diffusers(cfg, ours.state_dict()), cfg.image_size)


@pytest.mark.parametrize("change", [{"scale_shift": True}, {"head_channels": 4}, DIFFUSERS_CONVENTIONS],
                         ids=["scale_shift", "heads", "diffusers_conventions"])
def test_unet_options_equal_diffusers_settings(change):
    """scale_shift (resnet_time_scale_shift), attention heads (attention_head_dim) and diffusers'
    own conventions (flip_sin_to_cos, freq_shift 0, downsample_padding 1, norm_eps 1e-5); each
    convention changes the output, so the comparison sees them."""
    cfg = preset_model("demo", **change)
    ours = randomised(UNet.from_config(cfg))
    theirs = as_diffusers(cfg, ours.state_dict())
    assert_same_output(ours, theirs, cfg.image_size)
    assert_same_output(ours, theirs, cfg.image_size, x_scale=1e-3)
    if change is DIFFUSERS_CONVENTIONS:
        x, t = 1e-3 * torch.randn(1, 3, 32, 32), torch.tensor([500])
        for key in ("temb_cos_first", "temb_freq_shift", "downsample_pad", "norm_eps"):
            default = preset_model("demo", **{**change, key: preset_model("demo").model_dump()[key]})
            other = UNet.from_config(default).eval()
            other.load_state_dict(ours.state_dict())
            with torch.no_grad():
                assert (other(x, t) - ours(x, t)).abs().max() > 0.05, key


@pytest.mark.parametrize("preset, params", [("celeba64", 78_700_803), ("celeba128", 109_733_379)])
def test_full_size_presets_are_unet2dmodel_tensor_for_tensor(preset, params):
    """At full width (shapes only, on the meta device): the same tensors, names mapped one to one."""
    cfg = preset_model(preset)
    with torch.device("meta"):
        ours = UNet.from_config(cfg)
        theirs = diffusers.UNet2DModel.from_config(unet2d_config(cfg))
    own = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert diffusers_shapes(own, len(cfg.ch_mult)) == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert count_parameters(ours) == count_parameters(theirs) == params


def test_tensor_mapping_is_exact_both_ways_and_reads_old_attention_names():
    cfg = preset_model("demo", head_channels=8)
    state = randomised(UNet.from_config(cfg)).state_dict()
    own = {k: tuple(v.shape) for k, v in state.items()}
    theirs = to_diffusers(state, len(cfg.ch_mult))
    back = from_diffusers(theirs, own, len(cfg.ch_mult))
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {}
    for k, v in theirs.items():
        for new, was in legacy.items():
            k = k.replace(f".{new}.", f".{was}.")
        old[k] = v
    assert any(".query." in k for k in old) and rename_legacy(old).keys() == theirs.keys()


def test_config_round_trip():
    for preset in ("demo", "celeba32", "celeba64", "celeba128"):
        cfg = preset_model(preset, scale_shift=True, head_channels=16)
        back = model_settings(json.loads(json.dumps(unet2d_config(cfg))))
        assert {**cfg.model_dump(exclude={"cond_names"}), **back} == cfg.model_dump(exclude={"cond_names"})


# ----------------------------------------------------------------------------- the schedule


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_scheduler_config_gives_our_betas_and_maps_back(schedule, prediction):
    s = build_settings(preset="demo", overrides={"diffusion": {"schedule": schedule, "prediction": prediction,
                                                               "beta_start": 2e-4, "timesteps": 500}})
    cfg = scheduler_config(s.diffusion, s.sample, "0.30.0")
    theirs = diffusers.DDPMScheduler.from_config(cfg)
    ours = NoiseSchedule.from_config(s.diffusion).betas
    torch.testing.assert_close(theirs.betas.double(), ours, rtol=2e-6, atol=1e-9)  # diffusers works in float32
    diffusion, sample_over = diffusion_settings(cfg)
    got = s.diffusion.model_copy(update=diffusion)
    assert got == s.diffusion and sample_over["variance"] == s.sample.variance


def test_trained_betas_import_as_a_named_schedule():
    ours = NoiseSchedule.from_config(build_settings(preset="demo").diffusion).betas
    diffusion, _ = diffusion_settings({"trained_betas": ours.tolist(), "num_train_timesteps": 1000})
    assert diffusion["schedule"] == "linear" and diffusion["beta_end"] == pytest.approx(0.02)
    with pytest.raises(Exception, match="neither"):
        diffusion_settings({"trained_betas": ours.sqrt().tolist(), "num_train_timesteps": 1000})


# ----------------------------------------------------------------------------- ddpmkit export


def make_run(root: Path, settings: Settings, seed: int = 0) -> Path:
    """A run folder holding one checkpoint of random weights (EMA and raw weights differ)."""
    model = randomised(UNet.from_config(settings.model), seed)
    ema = randomised(UNet.from_config(settings.model), seed + 100)
    save_checkpoint(root / "checkpoints", model=model, ema_model=ema, state={}, settings=settings, step=7)
    return root


def export_run(root: Path, **diffusion) -> tuple[Path, Path, Settings]:
    """A 32 px run (T = 1000, `diffusion` settings) and its `ddpmkit export`."""
    settings = tiny(root / "run", model={"image_size": 32, "head_channels": 8, "attn_resolutions": [16]},
                    data={"size": 32}, diffusion={"timesteps": 1000, **diffusion})
    run = make_run(root / "run", settings)
    r = invoke("export", run, root / "out", "--format", "diffusers")
    assert r.exit_code == 0, r.output
    return run, root / "out", settings


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, Settings]:
    """A v-prediction run on the cosine schedule, exported."""
    return export_run(tmp_path_factory.mktemp("export"), prediction="v", schedule="cosine")


def test_export_writes_a_pipeline_diffusers_loads(exported):
    run, out, settings = exported
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "README.md", "model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors"]
    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert pipe.scheduler.config.num_train_timesteps == 1000
    ours, _, _ = load_model(run)  # the EMA weights: export's default
    assert_same_output(ours, pipe.unet.eval(), 32)
    images = pipe(batch_size=1, num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 32, 32, 3)


def test_export_no_ema_takes_the_raw_weights(exported, tmp_path):
    run, _, _ = exported
    r = invoke("export", run, tmp_path / "raw", "--no-ema")
    assert r.exit_code == 0, r.output
    unet = diffusers.UNet2DModel.from_pretrained(tmp_path / "raw" / "unet").eval()
    raw, _, _ = load_model(run, use_ema=False)
    assert_same_output(raw, unet, 32)


@pytest.mark.parametrize("prediction, schedule, x0, clip", [("eps", "linear", "none", False),
                                                           ("v", "linear", "clip", True)])
def test_diffusers_ddim_reproduces_our_ddim_samples(tmp_path, prediction, schedule, x0, clip):
    """η = 0: the same x_T and the same 10 steps give the same x_0 (diffusers' DDIMScheduler on the
    exported UNet2DModel, ours on the run; trailing spacing, ᾱ = 1 after the last step).

    Not v on the cosine schedule: ddpmkit's samplers take x̂_0 from ε (x - √(1-ᾱ) ε)/√ᾱ, and the
    cosine schedule's √ᾱ at t = T-1 is 5e-5, which turns float32 rounding into 1e-4 differences
    from diffusers, which takes x̂_0 from v directly (both are right; the float32 path differs)."""
    run, out, settings = export_run(tmp_path, prediction=prediction, schedule=schedule)
    model, settings, _ = load_model(run)
    sched = NoiseSchedule.from_config(settings.diffusion)
    sampler = DDIMSampler(sched, spacing="trailing", eta=0.0, x0=x0)
    sampler.set_timesteps(10)
    x_T = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    eps = eps_fn(model, torch.device("cpu"), "fp32", prediction=settings.diffusion.prediction, sched=sched)
    ours = sample(eps, sampler, tuple(x_T.shape), x_T=x_T)

    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    ddim = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=clip, thresholding=False,
                                               timestep_spacing="trailing", set_alpha_to_one=True)
    ddim.set_timesteps(10)
    assert ddim.timesteps.tolist() == sampler.timesteps.tolist()
    x = x_T.clone()
    with torch.no_grad():
        for t in ddim.timesteps:
            x = ddim.step(pipe.unet(x, t).sample, t, x, eta=0.0).prev_sample
    scale = ours.abs().max().item()  # unclipped, a random network's x̂_0 runs far out of [-1, 1]
    assert scale > 0.5
    torch.testing.assert_close(x, ours, rtol=0, atol=2e-5 * max(1.0, scale))  # diffusers' ᾱ is float32


def test_export_refuses_what_unet2dmodel_cannot_hold_and_full_folders(exported, tmp_path):
    run, out, _ = exported
    r = invoke("export", run, out)
    assert r.exit_code == 2 and "already holds files" in r.output and "--force" in r.output
    cond = tiny(tmp_path / "c", model={"cond_dim": 3, "cond_names": ["a", "b", "c"]})
    make_run(tmp_path / "c", cond)
    r = invoke("export", tmp_path / "c", tmp_path / "c_out")
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "conditioned on 3 attributes" in lines[0], r.output
    assert not (tmp_path / "c_out").exists()
    r = invoke("export", run, out, "--force")
    assert r.exit_code == 0, r.output


def test_export_then_import_gives_the_same_weights_and_settings(exported, tmp_path):
    run, out, settings = exported
    r = invoke("import", out, "--run-dir", tmp_path / "back")
    assert r.exit_code == 0, r.output
    ours, _, _ = load_model(run)
    back, got, step = load_model(tmp_path / "back")
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert got.model.model_dump(exclude={"dropout"}) == settings.model.model_dump(exclude={"dropout"})
    assert got.diffusion == settings.diffusion and step == 0
    info = json.loads((tmp_path / "back" / "run.json").read_text())
    assert info["imported_from"]["kind"] == "folder" and info["imported_from"]["pipeline"] == "DDPMPipeline"


def test_scheduler_defaults_and_refusals():
    """A config lists only the keys its writer knew: the rest are DDPMScheduler's defaults."""
    diffusion, sample_over = diffusion_settings({"_class_name": "DDIMScheduler", "num_train_timesteps": 100})
    assert diffusion == {"timesteps": 100, "prediction": "eps", "schedule": "linear", "beta_start": 1e-4,
                         "beta_end": 0.02}
    assert sample_over == {"variance": "fixed_small"}
    assert diffusion_settings({"clip_sample": False})[1]["x0"] == "none"
    assert diffusion_settings({"thresholding": True})[1]["x0"] == "dynamic"
    for bad, needle in [({"_class_name": "ScoreSdeVeScheduler"}, "no β schedule"),
                        ({"prediction_type": "sample"}, "prediction_type"),
                        ({"variance_type": "learned_range"}, "learned"),
                        ({"rescale_betas_zero_snr": True}, "zero-terminal-SNR")]:
        with pytest.raises(Exception, match=needle):
            diffusion_settings(bad)
