"""Inpainting: the RePaint schedule, the algorithm on an oracle model, the masks, and
`ddpmkit inpaint` end to end (known pixels exactly the input's, the pictures, the errors)."""

from __future__ import annotations

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

from conftest import TINY
from ddpmkit.cli.app import app
from ddpmkit.cli.inpaint_cmd import MASK_CHOICES
from ddpmkit.data.crops import load_square
from ddpmkit.data.synthetic import draw_face
from ddpmkit.errors import DdpmkitError
from ddpmkit.masks import MASKS, RANDOM_FRACTION, builtin_mask, face_boxes, load_mask, resolve_mask
from ddpmkit.samplers import DDPMSampler, PerImageNoise
from ddpmkit.samplers.repaint import RePaint, network_calls, repaint_schedule
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.settings import DiffusionConfig

runner = CliRunner()
SRC = Path(__file__).resolve().parents[1] / "src"


# ----------------------------------------------------------------------------- the schedule


def test_schedule_small_cases_by_hand():
    """Worked by hand from the paper's schedule: at each jump point below N - j, go up j and
    down again, r - 1 times."""
    assert repaint_schedule(6, jump=2, resample=2) == [5, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1]
    assert repaint_schedule(3, jump=1, resample=3) == [2, 1, 2, 1, 2, 1, 0, 1, 0, 1, 0, -1]
    # r = 1 (any j) is the replacement method: straight down
    assert repaint_schedule(5, jump=3, resample=1) == [4, 3, 2, 1, 0, -1]
    assert repaint_schedule(4, jump=4, resample=5) == [3, 2, 1, 0, -1]  # no jump point below N - j


@pytest.mark.parametrize("n,j,r", [(250, 10, 10), (100, 10, 5), (37, 4, 3), (10, 1, 2)])
def test_schedule_counts_and_moves(n, j, r):
    s = repaint_schedule(n, j, r)
    assert s[0] == n - 1 and s[-1] == -1
    assert all(abs(b - a) == 1 for a, b in zip(s, s[1:]))
    points = len(range(0, n - j, j))
    assert network_calls(n, j, r) == n + (r - 1) * j * points  # 2,410 for the paper's 250/10/10
    # every index is stepped down from r times at most (r where resampled), never above x_T's
    downs = [a for a, b in zip(s, s[1:]) if b < a]
    assert max(downs.count(k) for k in range(n)) == (r if points else 1)
    assert max(s) == n - 1


def test_schedule_refuses_zero():
    with pytest.raises(DdpmkitError):
        repaint_schedule(5, jump=0)


# ----------------------------------------------------------------------------- the algorithm


def _oracle(sched: NoiseSchedule, target: torch.Tensor):
    """ε of a data set holding one image: x̂_0 is `target` exactly, at the training index t."""

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = sched.alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
        return (x - ab.sqrt() * target) / (1 - ab).sqrt()

    return eps


@pytest.mark.parametrize("jump,resample", [(1, 1), (3, 3)])
def test_oracle_model_fills_its_image_and_keeps_the_known_exactly(jump, resample):
    """With a model that knows the one image of its data, the fill is that image, whatever the
    known region shows; the known pixels are the input's bit for bit. Checks the network sees
    the training index whose ᾱ the chain uses."""
    sched = NoiseSchedule.from_config(DiffusionConfig(timesteps=100))
    g = torch.Generator().manual_seed(0)
    target = torch.rand(1, 3, 8, 8, generator=g) * 2 - 1
    known = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    fill = builtin_mask("box", 8)
    smp = DDPMSampler(sched)
    smp.set_timesteps(20)
    rp = RePaint(smp, jump, resample)
    seen: list[int] = []
    out = rp.inpaint(_oracle(sched, target), known, fill[None, None], generator=PerImageNoise(0, 0, 2, "cpu"),
                     callback=lambda i, t, x, x0: seen.append(i))
    assert torch.equal(out[:, :, ~fill], known[:, :, ~fill])
    assert torch.allclose(out[:, :, fill], target.expand(2, -1, -1, -1)[:, :, fill], atol=1e-4)
    assert seen == list(range(-1, 20))  # the final descent, reported as a plain run's


def test_renoising_goes_up_the_chain():
    """q(x_k | x_0) then q(x_{k+1} | x_k) is q(x_{k+1} | x_0) on the respaced chain: the mean
    √ᾱ'_{k+1} x_0 and the variance 1 - ᾱ'_{k+1}, over 49,152 pixels."""
    sched = NoiseSchedule.from_config(DiffusionConfig(timesteps=1000))
    smp = DDPMSampler(sched)
    smp.set_timesteps(10)
    rp = RePaint(smp, 2, 2)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((4, 3, 64, 64), 0.5)
    for k in (0, 4, 8):
        x = rp.renoise(rp.known_at(x0, k, g), k, g)
        ab = float(smp.respaced.alphas_cumprod[k + 1])
        assert abs(float(x.mean()) - ab**0.5 * 0.5) < 0.02
        assert abs(float(x.var()) - (1 - ab)) < 0.03


def test_per_image_seeds_do_not_depend_on_the_batch():
    sched = NoiseSchedule.from_config(DiffusionConfig(timesteps=50))
    eps = lambda x, t: 0.3 * x  # noqa: E731
    smp = DDPMSampler(sched)
    smp.set_timesteps(10)
    rp = RePaint(smp, 2, 2)
    known = torch.zeros(3, 3, 8, 8)
    fill = builtin_mask("left", 8)[None, None]
    whole = rp.inpaint(eps, known, fill, generator=PerImageNoise(5, 0, 3, "cpu"))
    last = rp.inpaint(eps, known[:1], fill, generator=PerImageNoise(5, 2, 1, "cpu"))
    assert torch.equal(whole[2:], last)
    assert not torch.equal(whole[0], whole[1])


# ----------------------------------------------------------------------------- masks


@pytest.mark.parametrize("name,fraction", [("box", 0.25), ("left", 0.5), ("right", 0.5), ("top", 0.5), ("bottom", 0.5)])
def test_geometric_masks(name, fraction):
    m = builtin_mask(name, 32)
    assert m.shape == (32, 32) and m.dtype == torch.bool
    assert float(m.float().mean()) == fraction
    corner = {"box": (16, 16), "left": (5, 0), "right": (5, 31), "top": (0, 5), "bottom": (31, 5)}[name]
    assert m[corner]
    assert not m[tuple(31 - c for c in corner)] or name == "box"


@pytest.mark.parametrize("layout", ["ddim", "center140", "full", "demo"])
def test_face_masks_sit_where_the_faces_have_them(layout):
    boxes = face_boxes(layout)
    eyes, mouth = boxes["eyes"], boxes["mouth"]
    assert all(0 <= f <= 1 for f in (*eyes, *mouth))
    assert eyes[3] <= mouth[1] + 0.02  # the eyes above the mouth
    for l, t, r, b in (eyes, mouth):
        assert abs((l + r) / 2 - 0.5) < 0.03  # centred left to right
    m = builtin_mask("eyes", 64, layout)
    assert 0.08 < float(m.float().mean()) < 0.25
    assert 0.04 < float(builtin_mask("mouth", 64, layout).float().mean()) < 0.15


def test_eyes_on_the_ddim_crop():
    """The ddim crop (rows 57:185, columns 25:153 of 178x218): the eyes near row 111 are 0.42
    down; the mouth near row 152, 0.74 down."""
    eyes, mouth = face_boxes("ddim")["eyes"], face_boxes("ddim")["mouth"]
    assert eyes[1] < (111 - 57) / 128 < eyes[3]
    assert mouth[1] < (152 - 57) / 128 < mouth[3]
    assert eyes[0] < (69 - 25) / 128 and (108 - 25) / 128 < eyes[2]


def test_random_mask_is_seeded():
    a, b, c = builtin_mask("random", 32, seed=1), builtin_mask("random", 32, seed=1), builtin_mask("random", 32, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    for seed in range(10):
        f = float(builtin_mask("random", 32, seed=seed).float().mean())
        assert RANDOM_FRACTION[0] <= f <= RANDOM_FRACTION[1]


def test_user_masks(tmp_path):
    # the image's own size (178x218): cropped as the image was, then resized (nearest)
    arr = np.zeros((218, 178), dtype=np.uint8)
    arr[57:57 + 64, 25:153] = 255  # the top half of the ddim box
    Image.fromarray(arr).save(tmp_path / "m.png")
    m = load_mask(tmp_path / "m.png", 16, (178, 218), "ddim")
    assert m[:8].all() and not m[8:].any()
    # square: resized; RGBA: transparent = keep
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[:, 20:] = (255, 255, 255, 255)
    rgba[:, :20] = (255, 255, 255, 0)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "sq.png")
    assert torch.equal(load_mask(tmp_path / "sq.png", 8, (178, 218), "ddim"), builtin_mask("right", 8))
    Image.fromarray(np.zeros((10, 30), dtype=np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "black.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    for name, needle in [("wide.png", "30x10"), ("black.png", "nothing to fill"), ("junk.png", "cannot read"),
                         ("none.png", "not found")]:
        with pytest.raises(DdpmkitError, match=needle):
            load_mask(tmp_path / name, 8, (178, 218), "ddim")
    with pytest.raises(DdpmkitError, match="choose one of: box, left"):
        resolve_mask("nose", 8, layout="ddim", seed=0, image_size=(8, 8), crop="ddim")
    assert set(MASKS) == {"box", "left", "right", "top", "bottom", "eyes", "mouth", "random"}
    assert MASK_CHOICES == ", ".join(MASKS)  # the help's list (which must not import torch) is the real one


# ----------------------------------------------------------------------------- the command


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inpaint")
    cfg = root / "tiny.yaml"
    data = {**TINY, "train": {**TINY["train"], "run_dir": str(root / "run"), "max_steps": 2}}
    data["sample"] = {**TINY["sample"], "out_dir": str(root / "out" / "samples")}
    cfg.write_text(yaml.safe_dump(data))
    r = invoke("train", "--config", cfg, "--no-progress")
    assert r.exit_code == 0, r.output
    return root / "run"


@pytest.fixture
def face(tmp_path) -> Path:
    """A non-square photo: the run (demo faces) takes its centre square."""
    rng = np.random.default_rng(0)
    path = tmp_path / "face.png"
    Image.fromarray(rng.integers(0, 256, (49, 40, 3), dtype=np.uint8)).save(path)
    return path


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_inpaint_end_to_end_keeps_known_pixels_exactly(run, face, tmp_path):
    out = tmp_path / "o"
    r = invoke("inpaint", run, face, "--mask", "eyes", "--n", "3", "--batch-size", "2", "--steps", "6", "--jump", "2",
               "--resample", "2", "--gif", "--out", out, "--no-progress")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (out / "fills").iterdir()) == [f"fill_{i:05d}.png" for i in range(3)]
    inp, mask = _png(out / "input.png"), _png(out / "mask.png") > 0
    assert inp.shape == (16, 16, 3) and mask.shape == (16, 16)
    assert np.array_equal(mask, builtin_mask("eyes", 16, "demo").numpy())
    assert np.array_equal(inp, load_square(str(face), "full", 16).transpose(1, 2, 0))  # as prepare: centre square
    for p in (out / "fills").iterdir():
        fill = _png(p)
        assert np.array_equal(fill[~mask], inp[~mask])  # uint8, exactly
        assert not np.array_equal(fill[mask], inp[mask])
    assert Image.open(out / "grid.png").size[0] > 5 * 16  # input, mask and 3 fills in a row
    assert Image.open(out / "denoise.gif").n_frames >= 3
    # the same seed, another batch size: the same fills
    r = invoke("inpaint", run, face, "--mask", "eyes", "--n", "3", "--batch-size", "3", "--steps", "6", "--jump", "2",
               "--resample", "2", "--out", tmp_path / "o2", "--no-progress")
    assert r.exit_code == 0, r.output
    for k in range(3):
        name = f"fills/fill_{k:05d}.png"
        assert (out / name).read_bytes() == (tmp_path / "o2" / name).read_bytes()


def test_inpaint_newest_run_default_folder_and_user_mask(run, face, tmp_path, monkeypatch):
    monkeypatch.chdir(run.parent)
    Path("runs").mkdir(exist_ok=True)
    if not Path("runs/run").exists():
        Path("runs/run").symlink_to(run)
    mask = tmp_path / "hole.png"
    arr = np.zeros((49, 40), dtype=np.uint8)
    arr[20:30, 10:30] = 255
    Image.fromarray(arr).save(mask)
    r = invoke("inpaint", face, "--mask", mask, "--n", "1", "--steps", "4", "--resample", "1", "--jump", "1",
               "--no-progress")
    assert r.exit_code == 0, r.output
    assert "newest run" in r.output
    made = list((run.parent / "out" / "inpaint").iterdir())
    assert len(made) == 1 and made[0].name == "run-step2-face-mask-hole-repaint4-j1-r1-seed0"
    assert (made[0] / "grid.png").exists()


def test_inpaint_a_demo_face(run, tmp_path):
    """demo:K: demo face K of the stream after the run's own, at the run's size."""
    r = invoke("inpaint", run, "demo:3", "--mask", "mouth", "--n", "1", "--steps", "4", "--resample", "1",
               "--jump", "1", "--out", tmp_path / "d", "--no-progress")
    assert r.exit_code == 0, r.output
    assert np.array_equal(_png(tmp_path / "d" / "input.png"), draw_face(16, 1, 3))
    fill, mask = _png(tmp_path / "d" / "fills" / "fill_00000.png"), _png(tmp_path / "d" / "mask.png") > 0
    assert np.array_equal(mask, builtin_mask("mouth", 16, "demo").numpy())
    assert np.array_equal(fill[~mask], draw_face(16, 1, 3)[~mask])


def _error(*args) -> str:
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    return lines[0]


def test_inpaint_errors(run, face, tmp_path):
    assert "image not found" in _error("inpaint", run, tmp_path / "nope.jpg")
    assert "image not found: demo:x" in _error("inpaint", run, "demo:x")
    assert "no IMAGE given" in _error("inpaint")
    line = _error("inpaint", run, face, "--mask", "nose", "--out", tmp_path / "x")
    assert "unknown mask 'nose'" in line and "box, left, right, top, bottom, eyes, mouth, random" in line
    Image.fromarray(np.zeros((10, 30), dtype=np.uint8)).save(tmp_path / "wide.png")
    assert "10x30" not in (line := _error("inpaint", run, face, "--mask", tmp_path / "wide.png")) and "30x10" in line
    assert "--jump 8" in _error("inpaint", run, face, "--steps", "8", "--jump", "8")
    assert "--steps 500" in _error("inpaint", run, face, "--steps", "500")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 nothing")
    assert "cannot read image" in _error("inpaint", run, tmp_path / "bad.jpg")
    assert not (tmp_path / "x").exists()


def test_inpaint_help_loads_no_torch():
    code = ("import sys\nfrom ddpmkit.cli.app import app\ntry:\n    app(['inpaint', '--help'], prog_name='ddpmkit')\n"
            "except SystemExit as e:\n    assert e.code in (0, None)\nassert 'torch' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--resample" in proc.stdout and "eyes, mouth, random" in proc.stdout
