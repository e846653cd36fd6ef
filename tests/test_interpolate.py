"""Interpolation: slerp, DDIM inversion on the analytic Gaussian, and `ddpmkit interpolate` end to end.

The reconstruction of real images by a trained model is measured by benchmarks/inversion_check.py
(a trained model is too slow for CI); here inversion runs with the exact ε* of Gaussian data.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from analytic_gaussian import GaussianData
from conftest import TINY
from ddpmkit.cli.app import app
from ddpmkit.cli.interpolate_cmd import spread_pairs
from ddpmkit.data.synthetic import draw_face
from ddpmkit.generate import generate
from ddpmkit.interpolation import decode, reconstruction_error, seed_noise
from ddpmkit.samplers import DDIMSampler, sample
from ddpmkit.samplers.inversion import ddim_invert, invertible_ddim
from ddpmkit.samplers.slerp import slerp, slerp_path
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.settings import DiffusionConfig

runner = CliRunner()
SRC = Path(__file__).resolve().parents[1] / "src"


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def one_line_error(r, *needles: str) -> None:
    assert r.exit_code == 2, r.output
    text = " ".join(line for line in r.output.strip().splitlines() if line.strip())
    assert text.startswith("error:"), r.output
    for n in needles:
        assert n in text, (n, r.output)


# ----------------------------------------------------------------------------- slerp


def _gaussians(n: int = 2, d: tuple[int, ...] = (3, 16, 16), seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn((1, *d), generator=g) for _ in range(n)]


def test_slerp_ends_are_the_inputs_exactly():
    z0, z1 = _gaussians()
    assert torch.equal(slerp(z0, z1, 0.0), z0) and torch.equal(slerp(z0, z1, 1.0), z1)
    path = slerp_path(z0, z1, 7)
    assert path.shape == (7, 3, 16, 16) and path.dtype == torch.float32
    assert torch.equal(path[0], z0[0]) and torch.equal(path[-1], z1[0])


def test_slerp_keeps_the_norm_where_the_straight_line_loses_it():
    z0, z1 = _gaussians()
    r = z0.norm()
    z1_same = z1 * (r / z1.norm())
    norms = slerp_path(z0, z1_same, 11).flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, float(r)), rtol=1e-5)  # equal norms: kept exactly
    # two plain draws: every point stays near √d, as x_T ~ N(0, I) does; the line's middle does not
    d = z0.numel()
    norms = slerp_path(z0, z1, 11).flatten(1).norm(dim=1) / math.sqrt(d)
    assert ((norms - 1).abs() < 0.05).all(), norms
    assert abs(float(((z0 + z1) / 2).norm()) / math.sqrt(d) - 1) > 0.2  # the check above can fail


def test_slerp_steps_evenly_in_angle_and_image_by_image():
    z0, z1 = _gaussians()
    path = slerp_path(z0, z1, 6).flatten(1).double()
    unit = path / path.norm(dim=1, keepdim=True)
    angles = torch.arccos((unit[1:] * unit[:-1]).sum(1))
    assert torch.allclose(angles, angles.mean().expand_as(angles), rtol=1e-3)
    # rows are separate images: a batch gives each row its own angle
    a0, a1, b0, b1 = _gaussians(4)
    both = slerp(torch.cat([a0, b0]), torch.cat([a1, b1]), torch.tensor([0.3, 0.3]))
    assert torch.allclose(both[:1], slerp(a0, a1, 0.3), atol=1e-6)
    assert torch.allclose(both[1:], slerp(b0, b1, 0.3), atol=1e-6)


def test_slerp_of_parallel_vectors_is_the_line_and_bad_input_is_refused():
    z0, _ = _gaussians()
    mid = slerp(z0, 3 * z0, 0.5)
    assert torch.isfinite(mid).all() and torch.allclose(mid, 2 * z0, atol=1e-5)
    with pytest.raises(ValueError):
        slerp(z0, z0[..., :8], 0.5)
    with pytest.raises(ValueError):
        slerp_path(z0, z0, 1)


# ----------------------------------------------------------------------------- DDIM inversion


@pytest.fixture(scope="module")
def gaussian() -> tuple[GaussianData, torch.Tensor]:
    sched = NoiseSchedule.from_config(DiffusionConfig(timesteps=1000))
    data = GaussianData.standard(sched, (3, 4, 4))
    g = torch.Generator().manual_seed(0)
    x0 = (data.mu + data.s * torch.randn((8, 3, 4, 4), generator=g, dtype=torch.float64)).float()
    return data, x0


def _reconstruct(data: GaussianData, x0: torch.Tensor, steps: int, refine: int) -> float:
    smp = invertible_ddim(data.sched, steps)
    x_T = ddim_invert(data.eps, smp, x0, refine=refine)
    assert x_T.dtype == torch.float32 and 0.8 < float(x_T.std()) < 1.1  # the data's x_T is ~N(0, I)
    rec = sample(data.eps, smp, tuple(x0.shape), x_T=x_T)
    return float((rec - x0).square().mean().sqrt())


def test_inversion_then_decoding_reconstructs_the_data(gaussian):
    """With the exact ε*, at 100 steps: plain inversion within 0.03 rms (on [-1, 1]; measured
    0.019), first-order (error halves as steps double); with 2 fixed-point calls a step within
    1e-3 (measured 4.5e-4), 40x closer."""
    data, x0 = gaussian
    e50, e100, e200 = (_reconstruct(data, x0, n, 0) for n in (50, 100, 200))
    assert e100 < 0.03 and 1.6 < e50 / e100 < 2.4 and 1.6 < e100 / e200 < 2.4, (e50, e100, e200)
    refined = _reconstruct(data, x0, 100, 2)
    assert refined < 1e-3 and refined < e100 / 20, (refined, e100)


def test_inversion_refuses_a_decoder_it_cannot_invert(gaussian):
    data, x0 = gaussian
    for bad in (DDIMSampler(data.sched, eta=0.0, x0="clip_eps"), DDIMSampler(data.sched, eta=0.5, x0="none")):
        bad.set_timesteps(10)
        with pytest.raises(ValueError):
            ddim_invert(data.eps, bad, x0)


# ----------------------------------------------------------------------------- seeds: the ends are the samples


def test_seed_noise_and_decoded_ends_are_the_samples_of_those_seeds(gaussian):
    """The x_T of seed s is `generate`'s image 0 of seed s, exactly; decoded in one batch of frames
    the ends equal `generate`'s samples (same sampler and steps) to float tolerance (1e-5; batch
    composition may change the network's summation order, never the noise)."""
    data, _ = gaussian
    shape = (3, 4, 4)
    smp = DDIMSampler(data.sched, eta=0.0)
    smp.set_timesteps(20)
    starts: list[torch.Tensor] = []
    plain = {}
    for s in (3, 17):
        plain[s] = next(generate(data.eps, smp, 1, shape, seed=s, batch_size=1, device=torch.device("cpu"),
                                 callback=lambda i, t, x, x0: starts.append(x) if i < 0 else None))
    assert torch.equal(seed_noise(3, shape, "cpu"), starts[0]) and torch.equal(seed_noise(17, shape, "cpu"), starts[1])
    frames = decode(data.eps, smp, slerp_path(seed_noise(3, shape, "cpu"), seed_noise(17, shape, "cpu"), 5), 8)
    assert frames.shape == (5, 3, 4, 4)
    assert torch.allclose(frames[0], plain[3][0], atol=1e-5) and torch.allclose(frames[-1], plain[17][0], atol=1e-5)
    assert not torch.allclose(frames[2], frames[0], atol=1e-2)  # the middle is neither end


def test_reconstruction_error_in_levels():
    x = torch.zeros(1, 3, 2, 2)
    assert reconstruction_error(x, x) == (0.0, math.inf)
    mae, psnr = reconstruction_error(x + 2 / 255, x)
    assert abs(mae - 1.0) < 1e-4 and abs(psnr - 20 * math.log10(255)) < 1e-3


# ----------------------------------------------------------------------------- the command


def test_spread_pairs():
    assert spread_pairs(["run", "--seeds", "3", "17", "--frames", "4"]) == [
        "run", "--seeds", "3", "--seeds", "17", "--frames", "4"]
    assert spread_pairs(["--images", "a.jpg", "b.jpg", "c.jpg"]) == [
        "--images", "a.jpg", "--images", "b.jpg", "--images", "c.jpg"]
    assert spread_pairs(["--seeds", "-1", "2"]) == ["--seeds", "-1", "--seeds", "2"]
    assert spread_pairs(["--seeds", "--frames", "2"]) == ["--seeds", "--frames", "2"]  # click names the gap
    assert spread_pairs(["--seeds=3", "17", "run"]) == ["--seeds", "3", "--seeds", "17", "run"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run trained for 4 steps through `ddpmkit train` (the pictures are noise; the wiring is real)."""
    root = tmp_path_factory.mktemp("interp")
    cfg = root / "tiny.yaml"
    data = {**TINY, "train": {**TINY["train"], "run_dir": str(root / "run"), "max_steps": 4}}
    data["sample"] = {**TINY["sample"], "out_dir": str(root / "samples")}
    cfg.write_text(yaml.safe_dump(data))
    r = invoke("train", "--config", cfg, "--no-progress")
    assert r.exit_code == 0, r.output
    return root / "run"


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_seeds_strip_gif_frames_and_ends_equal_sample(trained, tmp_path):
    out = tmp_path / "walk"
    r = invoke("interpolate", trained, "--seeds", 3, 17, "--frames", 5, "--steps", 5, "--out", out, "--no-progress")
    assert r.exit_code == 0, r.output
    frames = sorted((out / "frames").iterdir())
    assert [p.name for p in frames] == [f"frame_{k:05d}.png" for k in range(5)]
    strip = Image.open(out / "strip.png")
    assert strip.width > 5 * 16 and strip.width > 3 * strip.height  # one row, enlarged
    gif = Image.open(out / "interpolation.gif")
    assert gif.size[0] >= 128 and gif.n_frames <= 8  # there and back: 5 + 3 (identical ones merge)
    for seed, frame in ((3, frames[0]), (17, frames[-1])):
        s_out = tmp_path / f"s{seed}"
        r = invoke("sample", trained, "--seed", seed, "--n", 1, "--sampler", "ddim", "--eta", 0, "--steps", 5,
                   "--out", s_out, "--no-progress")
        assert r.exit_code == 0, r.output
        # the same x_T and sampler: equal up to one 8-bit level (measured: identical files)
        assert np.abs(_png(s_out / "images" / "sample_00000.png") - _png(frame)).max() <= 1


def test_images_mode_inverts_and_writes_inputs(trained, tmp_path):
    a, b = tmp_path / "a face.png", tmp_path / "b.png"
    Image.fromarray(draw_face(40, 0, 0)).resize((40, 50)).save(a)  # not square: cropped as the run's data
    Image.fromarray(draw_face(16, 0, 1)).save(b)
    out = tmp_path / "inv"
    r = invoke("interpolate", trained, "--images", a, b, "--frames", 3, "--steps", 4, "--refine", 1, "--no-bounce",
               "--out", out, "--no-progress")
    assert r.exit_code == 0, r.output
    assert "image A decoded back from its x_T" in r.output and "PSNR" in r.output
    assert Image.open(out / "inputs.png").size[0] > 2 * 16
    assert len(list((out / "frames").iterdir())) == 3 and Image.open(out / "interpolation.gif").n_frames <= 3


def test_default_folder_is_named_after_run_step_and_settings(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in ((trained, "--seeds", 1, 2), ("--seeds", 1, 2, trained)):  # RUN may follow the seeds
        r = invoke("interpolate", *args, "--frames", 2, "--steps", 2, "--no-progress", "--set", "sample.out_dir=outs")
        assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "outs").iterdir()) == [
        "run-step4-interp-ddim2-seeds1-2", "run-step4-interp-ddim2-seeds1-2-2"]


def test_errors_are_one_line(trained, tmp_path):
    one_line_error(invoke("interpolate", trained, "--seeds", 3), "--seeds needs exactly two seeds, got 1")
    one_line_error(invoke("interpolate", trained, "--seeds", 3, 4, 5), "--seeds needs exactly two seeds, got 3", "RUN goes before")
    one_line_error(invoke("interpolate", trained), "--seeds S0 S1", "--images A B")
    one_line_error(invoke("interpolate", trained, "--seeds", 1, 2, "--images", "a", "b"), "not both")
    one_line_error(invoke("interpolate", trained, "--seeds", 1, 2, "--frames", 1), "--frames 1")
    one_line_error(invoke("interpolate", trained, "--seeds", -1, 2), "--seeds -1 is out of range")
    one_line_error(invoke("interpolate", trained, "--images", tmp_path / "gone.jpg", tmp_path / "b.jpg"),
                   "image not found", "gone.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    (tmp_path / "ok.png").write_bytes(b"")
    Image.new("RGB", (16, 16)).save(tmp_path / "ok.png")
    one_line_error(invoke("interpolate", trained, "--images", tmp_path / "junk.jpg", tmp_path / "ok.png",
                          "--steps", 2, "--out", tmp_path / "j"), "cannot read image", "junk.jpg")
    one_line_error(invoke("interpolate", trained, "--seeds", 1, 2, "--steps", 101), "--steps 101")
    one_line_error(invoke("interpolate", tmp_path / "no_run", "--seeds", 1, 2), "no_run")


def test_help_loads_no_torch():
    code = ("import sys\nfrom ddpmkit.cli.app import app\n"
            "try:\n    app(['interpolate', '--help'], prog_name='ddpmkit')\nexcept SystemExit as e:\n    assert e.code in (0, None)\n"
            "assert 'torch' not in sys.modules and 'PIL' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Usage: ddpmkit interpolate [OPTIONS] [RUN]" in proc.stdout and "--seeds" in proc.stdout
