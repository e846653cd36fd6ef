"""`ddpmkit import`: the published DDPM models' configs, every command on an imported run, refusals.

The configs of google/ddpm-celebahq-256, google/ddpm-ema-celebahq-256 and google/ddpm-cifar10-32
are fixtures (tests/fixtures/diffusers/README.md says where they were read). diffusers builds each
network with random weights and saves it as the Hub repositories do; the import must give the
same outputs. CIFAR-10's network is imported at full size; the two 256 px networks at full size
in shapes only, and end to end with a quarter of their widths (the same blocks, 256 px input).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import diffusers  # a test-only dependency: pyproject [test]
from ddpmkit.checkpoint import load_model
from ddpmkit.cli.app import app
from ddpmkit.interop.diffusers_schedule import diffusion_settings
from ddpmkit.interop.diffusers_unet import diffusers_shapes, model_settings
from ddpmkit.nn import UNet, count_parameters
from ddpmkit.settings import ModelConfig

from conftest import FID_WEIGHTS
from interop_helpers import assert_same_output, randomised

runner = CliRunner()
FIXTURES = Path(__file__).parent / "fixtures" / "diffusers"
REPO = Path(__file__).resolve().parents[1]
PUBLISHED = {  # name: (parameters, image size, ch_mult, variance_type)
    "ddpm-celebahq-256": (113_673_219, 256, (1, 1, 2, 2, 4, 4), "fixed_small"),
    "ddpm-ema-celebahq-256": (113_673_219, 256, (1, 1, 2, 2, 4, 4), "fixed_small"),
    "ddpm-cifar10-32": (35_746_307, 32, (1, 2, 2, 2), "fixed_large"),
}

# a 16 px UNet2DModel in diffusers' own conventions (its defaults for every key not given)
TINY_UNET = {"sample_size": 16, "block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8,
             "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def one_line_error(r, *needles: str) -> str:
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), r.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def fixture_configs(name: str) -> tuple[dict, dict]:
    folder = FIXTURES / name
    return json.loads((folder / "config.json").read_text()), json.loads((folder / "scheduler_config.json").read_text())




def save_diffusers(unet_cfg: dict, sched_cfg: dict, root: Path, pipeline: bool) -> "diffusers.UNet2DModel":
    """A random-weight UNet2DModel saved by diffusers: as a DDPMPipeline folder, or as the google
    repositories' flat layout (config.json, weights and scheduler_config.json side by side)."""
    model = randomised(diffusers.UNet2DModel.from_config(unet_cfg))
    scheduler = diffusers.DDPMScheduler.from_config(sched_cfg)
    if pipeline:
        diffusers.DDPMPipeline(unet=model, scheduler=scheduler).save_pretrained(root, safe_serialization=True)
    else:
        model.save_pretrained(root, safe_serialization=True)
        scheduler.save_config(root)
    return model




# ----------------------------------------------------------------------------- the published models


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_config_is_ddpmkits_unet_at_full_size(name):
    params, size, mult, variance = PUBLISHED[name]
    unet_cfg, sched_cfg = fixture_configs(name)
    model = model_settings(unet_cfg)
    assert (model["image_size"], model["ch"], model["ch_mult"], model["num_res_blocks"]) == (size, 128, mult, 2)
    assert model["attn_resolutions"] == (16,) and model["head_channels"] == 0 and model["num_groups"] == 32
    # DDPM's own conventions: nothing of diffusers' defaults (the keys are in the files)
    assert (model["norm_eps"], model["temb_cos_first"], model["temb_freq_shift"], model["downsample_pad"]) == (
        1e-6, False, 1.0, "bottom_right")
    cfg = ModelConfig(**model)
    with torch.device("meta"):
        ours = UNet.from_config(cfg)
        theirs = diffusers.UNet2DModel.from_config(unet_cfg)
    own = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert diffusers_shapes(own, len(mult)) == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert count_parameters(ours) == count_parameters(theirs) == params
    diffusion, sample = diffusion_settings(sched_cfg)
    assert diffusion == {"timesteps": 1000, "prediction": "eps", "schedule": "linear", "beta_start": 1e-4,
                         "beta_end": 0.02}
    assert sample == {"variance": variance}


@pytest.mark.parametrize("name, narrow, pipeline", [
    ("ddpm-celebahq-256", 4, True),  # a quarter of the widths, 256 px, saved as a DDPMPipeline folder
    ("ddpm-ema-celebahq-256", 4, True),
    ("ddpm-cifar10-32", 1, False),  # full size, the flat layout of the google repositories
])
def test_published_model_imports_with_equal_outputs_and_samples(name, narrow, pipeline, tmp_path):
    unet_cfg, sched_cfg = fixture_configs(name)
    unet_cfg = {**unet_cfg, "block_out_channels": [c // narrow for c in unet_cfg["block_out_channels"]]}
    theirs = save_diffusers(unet_cfg, sched_cfg, tmp_path / name, pipeline)
    run = tmp_path / "run"
    r = invoke("import", tmp_path / name, "--run-dir", run)
    assert r.exit_code == 0, r.output
    ours, settings, step = load_model(run)
    size = PUBLISHED[name][1]
    assert settings.data.size == size and step == 0 and settings.sample.variance == PUBLISHED[name][3]
    assert_same_output(ours, theirs, size, batch=1 if size > 32 else 2)
    r = invoke("sample", run, "--n", 1, "--steps", 2, "--device", "cpu", "--out", tmp_path / "s", "--no-progress")
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "s" / "images" / "sample_00000.png").size == (size, size)


def test_old_attention_names_import(tmp_path):
    """Files saved before diffusers 0.15 name attention tensors query, key, value, proj_attn."""
    unet_cfg, sched_cfg = fixture_configs("ddpm-cifar10-32")
    unet_cfg = {**unet_cfg, "block_out_channels": [32, 64, 64, 64]}
    theirs = save_diffusers(unet_cfg, sched_cfg, tmp_path / "old", pipeline=False)
    weights = tmp_path / "old" / "diffusion_pytorch_model.safetensors"
    new = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    tensors = load_file(str(weights))
    renamed = {}
    for k, v in tensors.items():
        for a, b in new.items():
            k = k.replace(f".{a}.", f".{b}.")
        renamed[k] = v
    assert renamed.keys() != tensors.keys()
    save_file(renamed, str(weights))
    r = invoke("import", tmp_path / "old", "--run-dir", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert_same_output(load_model(tmp_path / "run")[0], theirs, 32)


# ----------------------------------------------------------------------------- every command on an import


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    """A UNet2DModel in diffusers' own conventions (flip_sin_to_cos, freq_shift 0, downsample_padding
    1, norm_eps 1e-5, 8-channel heads: every one a ddpmkit option) imported to train on demo faces."""
    root = tmp_path_factory.mktemp("imported")
    save_diffusers(TINY_UNET, {"num_train_timesteps": 100, "prediction_type": "v_prediction"}, root / "src", True)
    run = root / "run"
    r = invoke("import", root / "src", "--run-dir", run, "--set", "data.dataset=synthetic",
               "--set", "data.synthetic_count=64", "--set", "train.batch_size=16", "--set", "train.report=false",
               "--set", f"sample.out_dir={root / 'samples'}")
    assert r.exit_code == 0, r.output
    assert f"wrote run {run}" in " ".join(r.output.split())
    return run


def test_imported_run_is_recognisably_imported(imported):
    info = json.loads((imported / "run.json").read_text())
    assert info["imported_from"]["kind"] == "folder" and info["imported_from"]["weights_dtype"] == "float32"
    model = load_model(imported)[1].model
    assert (model.temb_cos_first, model.temb_freq_shift, model.downsample_pad, model.norm_eps,
            model.head_channels) == (True, 0.0, "all_sides", 1e-5, 8)
    r = invoke("inspect", imported)
    assert r.exit_code == 0 and "imported from" in r.output, r.output
    r = invoke("report", imported)
    assert r.exit_code == 0, r.output
    assert "imported from" in (imported / "report.html").read_text()


def test_sample_inpaint_interpolate_work_on_an_import(imported, tmp_path):
    r = invoke("sample", imported, "--n", 2, "--steps", 3, "--out", tmp_path / "s", "--no-progress")
    assert r.exit_code == 0, r.output
    r = invoke("inpaint", imported, "demo:1", "--mask", "eyes", "--n", 1, "--steps", 4, "--jump", 1, "--resample", 1,
               "--out", tmp_path / "i", "--no-progress")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "i" / "fills" / "fill_00000.png").exists()
    r = invoke("interpolate", imported, "--seeds", 1, 2, "--frames", 2, "--steps", 2, "--out", tmp_path / "p",
               "--no-progress")
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "p" / "frames").iterdir())) == 2


@pytest.mark.skipif(not FID_WEIGHTS.exists(), reason=f"FID Inception weights missing: {FID_WEIGHTS}")
def test_fid_works_on_an_import(imported, tmp_path):
    ref = tmp_path / "ref"
    ref.mkdir()
    for k in range(4):
        Image.new("RGB", (16, 16), (40 * k, 90, 200 - 30 * k)).save(ref / f"{k}.png")
    r = invoke("fid", imported, ref, "--n", 4, "--steps", 2, "--sampler", "ddim", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "FID" in r.output


def test_train_resume_fine_tunes_an_import(imported, tmp_path):
    run = tmp_path / "tune"
    shutil.copytree(imported, run)
    cfg = (run / "config.yaml").read_text().replace(str(imported), str(run))
    (run / "config.yaml").write_text(cfg)
    before = load_model(run, use_ema=False)[0].state_dict()
    r = invoke("train", "--run-dir", run, "--resume", "--max-steps", 2, "--no-progress")
    assert r.exit_code == 0, r.output
    assert "resuming" in r.output and (run / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    after = load_model(run, use_ema=False)[0].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained from the imported weights


# ----------------------------------------------------------------------------- refusals


def folder_with(root: Path, unet_cfg: dict, sched_cfg: dict | None = None, weights: bool = True) -> Path:
    """A bare model folder holding these configs and a stand-in weights file."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", **unet_cfg}))
    if sched_cfg is not None:
        (root / "scheduler_config.json").write_text(json.dumps(sched_cfg))
    if weights:
        save_file({"x": torch.zeros(1)}, str(root / "diffusion_pytorch_model.safetensors"))
    return root


@pytest.mark.parametrize("change, needles", [
    ({"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"]}, ["CrossAttnDownBlock2D", "down_block_types[1]"]),
    ({"up_block_types": ["UpBlock2D", "UpBlock2D"]}, ["level 1 is AttnDownBlock2D", "UpBlock2D on the way up"]),
    ({"num_class_embeds": 10}, ["num_class_embeds", "class conditioning"]),
    ({"time_embedding_type": "fourier"}, ["time_embedding_type", "fourier"]),
    ({"out_channels": 6}, ["out_channels", "learned variance"]),
    ({"block_out_channels": [16, 40]}, ["block_out_channels", "multiples of the first"]),
    ({"mid_block_type": None}, ["mid_block_type"]),
])
def test_import_refuses_what_the_unet_cannot_hold(tmp_path, change, needles):
    src = folder_with(tmp_path / "src", {**TINY_UNET, **change}, {})
    one_line_error(invoke("import", src, "--run-dir", tmp_path / "run"), *needles)
    assert not (tmp_path / "run").exists()


def test_import_refusals_name_the_problem(tmp_path):
    good = {"num_train_timesteps": 100}
    src = folder_with(tmp_path / "pickled", TINY_UNET, good, weights=False)
    (src / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    one_line_error(invoke("import", src, "--run-dir", tmp_path / "r"), "only pickled weights", "never unpickles",
                   "safe_serialization=True")
    src = folder_with(tmp_path / "nosched", TINY_UNET)
    one_line_error(invoke("import", src, "--run-dir", tmp_path / "r"), "no scheduler_config.json", "--scheduler-json FILE")
    src = folder_with(tmp_path / "scaled", TINY_UNET, {"beta_schedule": "scaled_linear"})
    one_line_error(invoke("import", src, "--run-dir", tmp_path / "r"), "beta_schedule", "scaled_linear")
    src = folder_with(tmp_path / "wrong", TINY_UNET, good)  # the stand-in weights fit no network
    one_line_error(invoke("import", src, "--run-dir", tmp_path / "r"), "does not hold the network")
    one_line_error(invoke("import", src, "--run-dir", tmp_path / "r", "--set", "model.ch=8"), "--set model.ch=8")
    one_line_error(invoke("import", "nothing_here", "--run-dir", tmp_path / "r"), "neither a folder nor")
    index = tmp_path / "ldm"
    index.mkdir()
    (index / "model_index.json").write_text(json.dumps({"_class_name": "LDMPipeline",
                                                         "unet": ["diffusers", "UNet2DConditionModel"]}))
    one_line_error(invoke("import", index, "--run-dir", tmp_path / "r"), "UNet2DConditionModel")
    assert not (tmp_path / "r").exists()


def test_import_uses_a_given_scheduler_and_refuses_an_existing_run(tmp_path, imported):
    src = tmp_path / "src"
    save_diffusers(TINY_UNET, {"num_train_timesteps": 100}, src, pipeline=False)
    sched = tmp_path / "elsewhere.json"
    shutil.move(src / "scheduler_config.json", sched)
    r = invoke("import", src, "--run-dir", tmp_path / "run", "--scheduler-json", sched)
    assert r.exit_code == 0, r.output
    one_line_error(invoke("import", src, "--run-dir", imported, "--scheduler-json", sched), "already holds")


def test_hub_id_offline_fails_in_one_line_naming_the_id_and_the_folder_way(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"), "COLUMNS": "400"}
    proc = subprocess.run([sys.executable, "-m", "ddpmkit", "import", "google/ddpm-ema-celebahq-256", "--run-dir",
                           str(tmp_path / "run")], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stdout + proc.stderr
    assert "cannot fetch google/ddpm-ema-celebahq-256" in lines[0] and "ddpmkit import DIR" in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


def test_import_refuses_ill_typed_configs_in_one_line(tmp_path):
    src = folder_with(tmp_path / "typed", {**TINY_UNET, "dropout": "lots", "layers_per_block": 1}, {})
    one_line_error(invoke("import", src, "--run-dir", tmp_path / "r"), "config.json holds a value of the wrong type")
    src = folder_with(tmp_path / "typed2", {**TINY_UNET, "down_block_types": 5}, {})
    one_line_error(invoke("import", src, "--run-dir", tmp_path / "r"), "config.json")
    src = folder_with(tmp_path / "typed3", TINY_UNET, {"beta_start": "small"})
    one_line_error(invoke("import", src, "--run-dir", tmp_path / "r"), "scheduler_config.json")


def test_import_checks_the_file_before_building_the_declared_network(tmp_path):
    """A config declaring a huge network over a small file is refused before anything is built."""
    src = tmp_path / "src"
    save_diffusers(TINY_UNET, {"num_train_timesteps": 100}, src, pipeline=False)
    (src / "config.json").write_text(json.dumps({**TINY_UNET, "layers_per_block": 100_000}))
    one_line_error(invoke("import", src, "--run-dir", tmp_path / "r"), "2 levels of 1 residual blocks",
                   "2 of 100000")


def test_hub_id_is_fetched_into_the_hub_cache_with_configs_and_safetensors_only(tmp_path, monkeypatch):
    """The Hub's client is asked for configs and safetensors only; the run records id and commit.
    (No network here: snapshot_download is replaced by one that hands over a saved pipeline.)"""
    import huggingface_hub

    from ddpmkit.interop.hub import ALLOW

    snapshot = tmp_path / "hub" / "snapshots" / ("a1b2c3d4" * 5)
    save_diffusers(TINY_UNET, {"num_train_timesteps": 100}, snapshot, pipeline=True)
    asked = {}

    def fake_download(repo_id, revision=None, allow_patterns=None, **kw):
        asked.update(repo_id=repo_id, revision=revision, allow_patterns=allow_patterns)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    r = invoke("import", "someone/ddpm-faces", "--run-dir", tmp_path / "run", "--revision", "main")
    assert r.exit_code == 0, r.output
    assert asked == {"repo_id": "someone/ddpm-faces", "revision": "main", "allow_patterns": ALLOW}
    assert all(p.endswith((".json", ".safetensors")) for p in ALLOW)
    origin = json.loads((tmp_path / "run" / "run.json").read_text())["imported_from"]
    assert origin["kind"] == "hub" and origin["source"] == "someone/ddpm-faces" and origin["revision"] == snapshot.name
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # the hub extra not installed
    one_line_error(invoke("import", "someone/ddpm-faces", "--run-dir", tmp_path / "run2"), "hub extra",
                   "ddpmkit import DIR")
