"""`ddpmkit noise-demo`: the forward process shown on a real CelebA image and a generated one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from conftest import CELEBA
from ddpmkit.cli.noise_demo_cmd import noise_demo
from ddpmkit.data.synthetic import make_faces
from ddpmkit.images import load_image, to_uint8
from ddpmkit.pictures import PAD, forward_frames, forward_strip, strip_size
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.settings import DiffusionConfig


app = typer.Typer()
app.command("noise-demo")(noise_demo)


@app.callback()
def _root() -> None:  # keeps `noise-demo` a subcommand, as in the real app
    pass


runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, ["noise-demo", *map(str, args)])


def _gif_frames(path: Path) -> tuple[int, int | None]:
    with Image.open(path) as im:
        return im.n_frames, im.info.get("loop")


@pytest.fixture(scope="module")
def celeba_image() -> Path:
    return CELEBA / "img_align_celeba" / "000001.jpg"


@pytest.fixture()
def face_png(tmp_path: Path) -> Path:
    """A generated, non-square image: a 48 px face on a wider canvas."""
    face = make_faces(1, 48, seed=5)[0].permute(1, 2, 0).numpy()
    canvas = np.full((48, 80, 3), 30, dtype=np.uint8)
    canvas[:, 16:64] = face
    path = tmp_path / "face.png"
    Image.fromarray(canvas).save(path)
    return path


@pytest.mark.shared_celeba
def test_real_image(tmp_path: Path, celeba_image: Path):
    out = tmp_path / "demo"
    r = _run(celeba_image, "--t", 0, "--t", 500, "--t", 999, "--size", 32, "--frames", 10, "--out", out)
    assert r.exit_code == 0, r.output
    assert "SNR" in r.output and "999" in r.output
    # says what it does, and prints the paths it wrote, whole
    assert "noising" in r.output and "3 timesteps" in r.output and "10 frames" in r.output
    assert f"wrote {out / 'forward_strip.png'}" in r.output and f"wrote {out / 'forward.gif'}" in r.output
    assert sorted(p.name for p in out.iterdir()) == ["forward.gif", "forward_strip.png"]
    grid = Image.open(out / "forward_strip.png")
    side = 64  # 32 px images are shown enlarged 2x
    assert grid.size == strip_size(3, 32)
    assert grid.size[0] == PAD + 3 * (side + PAD) and grid.size[1] > side + 2 * PAD
    assert _gif_frames(out / "forward.gif") == (10, 0)

    # column t=0 is (almost) the image itself; column t=999 is (almost) pure noise
    x0 = to_uint8(load_image(celeba_image, 32))[0].permute(1, 2, 0).numpy().astype(float)
    arr = np.asarray(grid.convert("RGB")).astype(float)

    def col(k: int) -> np.ndarray:  # column k's image, back at 32 px
        left = PAD + k * (side + PAD)
        return arr[PAD : PAD + side : 2, left : left + side : 2]

    assert np.abs(col(0) - x0).mean() < 4
    assert np.abs(col(2) - x0).mean() > 40
    assert np.abs(col(1) - x0).mean() > np.abs(col(0) - x0).mean() + 10


def test_generated_image_default_timesteps_and_seed(tmp_path: Path, face_png: Path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert _run(face_png, "--size", 16, "--frames", 5, "--out", a).exit_code == 0
    assert _run(face_png, "--size", 16, "--frames", 5, "--out", b).exit_code == 0
    assert _run(face_png, "--size", 16, "--frames", 5, "--seed", 1, "--out", c).exit_code == 0
    grid = Image.open(a / "forward_strip.png")
    assert grid.size == strip_size(8, 16)  # the 8 default timesteps
    assert grid.size[0] == PAD + 8 * (64 + PAD)  # 16 px shown 4x
    assert _gif_frames(a / "forward.gif") == (5, 0)
    # one seeded noise tensor: same seed, same pictures; another seed, other noise
    assert (a / "forward_strip.png").read_bytes() == (b / "forward_strip.png").read_bytes()
    assert (a / "forward_strip.png").read_bytes() != (c / "forward_strip.png").read_bytes()


def test_strip_and_gif_frames_carry_the_same_labels():
    """At the same displayed size, a strip column and a GIF frame of the same t are drawn alike:
    image, then "t=", the signal √ᾱ_t bar and value, the noise √(1-ᾱ_t) bar and value."""
    sched = NoiseSchedule.from_config(DiffusionConfig())
    x0 = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    ts = [0, 300, 999]
    strip = np.asarray(forward_strip(sched, x0, noise, ts))
    frames = [np.asarray(f) for f in forward_frames(sched, x0, noise, ts)]
    side = 128  # 128 px images are shown as they are in both
    for k, frame in enumerate(frames):
        left = PAD + k * (side + PAD)
        column = strip[PAD : PAD + frame.shape[0], left : left + side]
        np.testing.assert_array_equal(column, frame)
    # the labels differ between timesteps (values, bar lengths), so the comparison means something
    assert not np.array_equal(frames[0][side:], frames[1][side:])
    blue = np.all(frames[1][side:] == (50, 100, 200), axis=-1).sum()
    red = np.all(frames[1][side:] == (200, 60, 50), axis=-1).sum()
    assert blue > 0 and red > 0  # both the signal and the noise are shown


def test_missing_image(tmp_path: Path):
    missing = tmp_path / "no_such_face.jpg"
    r = _run(missing, "--out", tmp_path / "o")
    assert r.exit_code == 2
    assert str(missing) in r.output and "error:" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_t_out_of_range(tmp_path: Path, face_png: Path):
    r = _run(face_png, "--t", 1000, "--out", tmp_path / "o")
    assert r.exit_code == 2
    assert "1000" in r.output and "0..999" in r.output
    r = _run(face_png, "--t", -1, "--out", tmp_path / "o")
    assert r.exit_code == 2 and "--t -1 is out of range" in r.output
    # the valid range follows the configured T
    r = _run(face_png, "--t", 60, "--set", "diffusion.timesteps=50", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "0..49" in r.output
    assert not (tmp_path / "o").exists()


def test_bad_frames_and_size(tmp_path: Path, face_png: Path):
    r = _run(face_png, "--frames", 1, "--out", tmp_path / "o")
    assert r.exit_code == 2 and "--frames" in r.output
    r = _run(face_png, "--size", 4, "--out", tmp_path / "o")
    assert r.exit_code == 2 and "--size" in r.output
