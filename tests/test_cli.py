"""Every command end to end on tiny settings, through the real Typer app, and its bad-input errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from ddpmkit.cli.app import app

from conftest import TINY

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A config file and a run trained for 4 steps through `ddpmkit train`."""
    root = tmp_path_factory.mktemp("cli")
    cfg = root / "tiny.yaml"
    data = {**TINY, "train": {**TINY["train"], "run_dir": str(root / "run"), "max_steps": 4, "ckpt_every": 2}}
    data["sample"] = {**TINY["sample"], "out_dir": str(root / "samples")}
    cfg.write_text(yaml.safe_dump(data))
    r = invoke("train", "--config", cfg, "--no-progress")
    assert r.exit_code == 0, r.output
    return cfg, root / "run"


def one_line_error(r, *needles: str) -> str:
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.strip().splitlines() if line.strip()]
    text = " ".join(lines)  # rich may wrap a long line on a narrow terminal; it is still one message
    assert text.startswith("error:"), r.output
    for n in needles:
        assert n in text.replace("\n", ""), (n, r.output)
    return text


def test_train_writes_a_run(trained):
    _, run = trained
    assert (run / "config.yaml").exists() and (run / "run.json").exists()
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert len((run / "log.jsonl").read_text().splitlines()) == 4


def test_train_resume_continues_and_epochs_option(trained):
    cfg, run = trained
    r = invoke("train", "--run-dir", run, "--resume", "--max-steps", "6", "--no-progress")
    assert r.exit_code == 0, r.output
    assert "resuming" in r.output
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000006"
    # --epochs as written in the docs: 64 images / batch 16 = 4 steps an epoch
    r = invoke("train", "--config", cfg, "--run-dir", run.parent / "epochs", "--epochs", "1", "--max-steps", "100", "--no-progress")
    assert r.exit_code == 0, r.output
    assert (run.parent / "epochs" / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    # --epochs alone is not cut short by the config's train.max_steps (4): 2 epochs = 8 steps
    r = invoke("train", "--config", cfg, "--run-dir", run.parent / "epochs2", "--epochs", "2", "--no-progress")
    assert r.exit_code == 0, r.output
    assert (run.parent / "epochs2" / "checkpoints" / "latest").read_text().strip() == "step_00000008"


def test_sample_grid_images_and_gif(trained, tmp_path):
    cfg, run = trained
    out = tmp_path / "s"
    r = invoke("sample", run, "--n", "5", "--seed", "0", "--gif", "--out", out, "--batch-size", "4")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"sample_{i:05d}.png" for i in range(5)]
    assert Image.open(out / "grid.png").size[0] > 16
    gif = Image.open(out / "denoise.gif")
    assert gif.n_frames >= 5
    # the same seed gives the same images; a folder with files is not overwritten without --force
    r2 = invoke("sample", run, "--n", "5", "--seed", "0", "--out", out, "--batch-size", "4")
    one_line_error(r2, str(out), "--force")
    out2 = tmp_path / "s2"
    assert invoke("sample", run, "--n", "5", "--seed", "0", "--out", out2, "--batch-size", "4").exit_code == 0
    assert (out / "images" / "sample_00004.png").read_bytes() == (out2 / "images" / "sample_00004.png").read_bytes()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmsolver++"])
def test_sample_with_every_sampler(trained, tmp_path, sampler):
    _, run = trained
    r = invoke("sample", run, "--n", "2", "--sampler", sampler, "--steps", "5", "--out", tmp_path / sampler)
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / sampler / "images").iterdir())) == 2


def test_sample_default_output_folder_is_never_reused(trained, tmp_path, monkeypatch):
    _, run = trained
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert invoke("sample", run, "--n", "1", "--set", "sample.out_dir=outs").exit_code == 0
    assert len(list((tmp_path / "outs").iterdir())) == 2


def test_inspect_run_checkpoint_yaml_and_settings(trained):
    cfg, run = trained
    r = invoke("inspect", run)
    assert r.exit_code == 0, r.output
    assert "EMA weights" in r.output and "yes" in r.output and "parameters" in r.output
    r = invoke("inspect", run / "checkpoints" / "step_00000004" / "ema.safetensors")
    assert r.exit_code == 0 and "step" in r.output
    r = invoke("inspect", cfg)
    assert r.exit_code == 0 and "train.max_steps" in r.output
    r = invoke("inspect", "--preset", "celeba64")
    assert r.exit_code == 0 and "78,700,803" in r.output


def test_noise_demo_runs(tmp_path):
    img = tmp_path / "face.png"
    Image.new("RGB", (40, 30), (200, 120, 90)).save(img)
    r = invoke("noise-demo", img, "--out", tmp_path / "nd", "--t", "0", "--t", "500", "--frames", "4", "--size", "32")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "nd" / "forward_strip.png").exists() and (tmp_path / "nd" / "forward.gif").exists()


# ------------------------------------------------------------------ bad input


def test_missing_config_file(tmp_path):
    one_line_error(invoke("train", "--config", tmp_path / "nope.yaml"), "nope.yaml")


def test_unknown_key_and_bad_values(tmp_path):
    one_line_error(invoke("train", "--set", "train.learning_rate=1"), "train.learning_rate", "unknown key")
    one_line_error(invoke("train", "--set", "train.batch_size=many"), "train.batch_size", "many")
    one_line_error(invoke("train", "--set", "model.dropout=2"), "model.dropout")
    one_line_error(invoke("sample", "--preset", "nope"), "nope")


def test_missing_image_and_checkpoint(tmp_path):
    one_line_error(invoke("noise-demo", tmp_path / "missing.jpg"), "missing.jpg")
    one_line_error(invoke("sample", tmp_path / "no_run"), "no_run")
    one_line_error(invoke("inspect", tmp_path / "nothing"), "nothing")


def test_existing_run_is_not_overwritten(trained):
    cfg, run = trained
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    one_line_error(invoke("train", "--config", cfg, "--no-progress"), str(run), "--resume")
    assert before == {p: p.stat().st_mtime_ns for p in run.rglob("*")}


def test_checkpoint_from_another_architecture(trained, tmp_path):
    _, run = trained
    latest = (run / "checkpoints" / "latest").read_text().strip()  # older ones keep only their EMA
    weights = run / "checkpoints" / latest / "model.safetensors"
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import load_file, save_file

    save_file(load_file(weights), str(foreign))  # same tensors, no ddpmkit metadata
    r = invoke("sample", foreign, "--preset", "demo", "--n", "1")
    one_line_error(r, "different architecture", "foreign.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    one_line_error(invoke("sample", junk, "--n", "1"), "junk.safetensors")


def test_inspect_a_prepared_cache_never_writes_into_it(tmp_path, monkeypatch):
    from ddpmkit.data.synthetic import make_faces

    faces = tmp_path / "faces"
    faces.mkdir()
    for i, img in enumerate(make_faces(4, 24, seed=1)):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(faces / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    r = invoke("prepare", "--data-root", faces, "--size", "16", "--crop", "full", "--cache-dir", "cache",
               "--workers", "1", "--set", "data.dataset=folder")
    assert r.exit_code == 0, r.output
    (cache,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    before = sorted(p.name for p in cache.iterdir())
    r = invoke("inspect", cache)
    assert r.exit_code == 0, r.output
    assert "per split" in r.output and "size on disk" in r.output
    assert sorted(p.name for p in cache.iterdir()) == before  # no preview.png in the data
    assert (tmp_path / "outputs" / "previews" / f"{cache.name}.png").is_file()
    r = invoke("inspect", cache, "--preview-png", tmp_path / "p.png")
    assert r.exit_code == 0 and Image.open(tmp_path / "p.png").size == (7 * (4 * 18 + 2), 7 * (18 + 2))  # enlarged to 512


def test_help_does_not_import_torch():
    """`ddpmkit --help` answers fast: the CLI modules load torch only when a command runs."""
    code = "import sys; from ddpmkit.cli.app import app; assert 'torch' not in sys.modules, 'torch imported'"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
