"""The denoising GIF (`DenoiseRecorder`) and the log-SNR spacing of GIF frames."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit.data.synthetic import make_faces
from ddpmkit.pictures import LAM_MAX, LAM_MIN, PAD, DenoiseRecorder, frame_states, log_snr, snr_timesteps
from ddpmkit.samplers import make_sampler, sample
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.settings import DiffusionConfig, SampleConfig


@pytest.fixture(scope="module")
def sched() -> NoiseSchedule:
    return NoiseSchedule.from_config(DiffusionConfig())  # linear, T = 1000


def test_frame_states_even_in_log_snr_within_the_clip():
    lam = torch.linspace(-10, 10, 201).tolist()  # λ rises 0.1 a state
    picks = frame_states(lam, 14)
    assert len(picks) == 14 and picks == sorted(set(picks))
    assert picks[0] == 0 and picks[-1] == 200  # the first and the last always
    inner = [lam[k] for k in picks[1:-1]]
    assert min(inner) == pytest.approx(LAM_MIN) and max(inner) == pytest.approx(LAM_MAX)
    gaps = np.diff(inner)
    assert np.allclose(gaps, 12 / 11, atol=0.11)  # uniform, up to the 0.1 grid of the states
    assert frame_states(lam[:5], 10) == [0, 1, 2, 3, 4]  # fewer states than frames: all
    # states bunched in λ: picks stay distinct and still number `count`
    bunched = [0.0] * 50 + [1.0] * 50
    picks = frame_states(bunched, 20)
    assert len(set(picks)) == 20 and picks[0] == 0 and picks[-1] == 99


def test_snr_timesteps_linear_and_cosine():
    for schedule in ("linear", "cosine"):
        s = NoiseSchedule.from_config(DiffusionConfig(schedule=schedule))
        ts = snr_timesteps(s.alphas_cumprod, 40)
        assert len(ts) == 40 and ts[0] == 0 and ts[-1] == s.T - 1 and ts == sorted(set(ts))
        lam = log_snr(s.alphas_cumprod[ts[1:-1]])
        assert lam.min() >= LAM_MIN - 0.2 and lam.max() <= LAM_MAX + 0.2
        # uniform in t would put most frames where x_t is noise (λ < 0); these are balanced
        assert 0.35 < (lam < 0).double().mean() < 0.65
    uniform_t = torch.linspace(0, 999, 40).round().long()
    lam_uniform = log_snr(NoiseSchedule.from_config(DiffusionConfig()).alphas_cumprod[uniform_t])
    assert (lam_uniform < 0).double().mean() > 0.7


def test_recorder_pairs_each_x_t_with_the_prediction_made_from_it(sched: NoiseSchedule):
    """Driven by hand: state k holds the value a[k], the x̂_0 predicted from it b[k]."""
    timesteps = list(range(999, -1, -100))  # 10 visited timesteps
    n = len(timesteps)
    rec = DenoiseRecorder(timesteps, sched.alphas_cumprod, frames=4, max_images=2)
    a = torch.linspace(-0.9, 0.9, n + 1)
    b = torch.linspace(0.8, -0.8, n)
    const = lambda v: torch.full((3, 3, 4, 4), float(v))  # noqa: E731 - 3 images, 2 shown
    rec(-1, timesteps[0], const(a[0]), None)
    for i in range(n):
        rec(i, timesteps[i], const(a[i + 1]), const(b[i]))
    kept = sorted(rec.keep)
    assert len(rec.frames) == 4 and kept[0] == 0 and kept[-1] == n
    for frame, k in zip(rec.frames, kept):
        arr = np.asarray(frame)
        h, w = arr.shape[:2]
        grid_w = (w - 4 * PAD) // 2  # two grids, PAD around and 2 PAD between
        mid_y = h // 2
        left = arr[mid_y, PAD + grid_w // 4]  # inside the first image of the x_t grid
        right = arr[mid_y, 3 * PAD + grid_w + grid_w // 4]
        expect_left = round((float(a[k]) + 1) * 127.5)
        expect_right = round((float(b[min(k, n - 1)]) + 1) * 127.5)  # the sample: the last x̂_0
        assert abs(int(left[0]) - expect_left) <= 1, (k, left, expect_left)
        assert abs(int(right[0]) - expect_right) <= 1, (k, right, expect_right)
    assert all(f.size == rec.frames[0].size for f in rec.frames)


def _denoise_gif(sched: NoiseSchedule, tmp_path: Path, sampler: str, steps: int, frames: int = 40) -> tuple[Path, DenoiseRecorder]:
    """16 generated faces of 32 px, sampled with an ε that knows them better as the SNR grows."""
    x0 = make_faces(16, 32, seed=3).float() / 127.5 - 1
    mean = x0.mean(0, keepdim=True)
    ab = sched.alphas_cumprod.float()

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = ab[t].view(-1, 1, 1, 1)
        w = torch.sigmoid(torch.log(a / (1 - a)) + 3)
        return (x - a.sqrt() * (w * x0 + (1 - w) * mean)) / (1 - a).sqrt()

    smp = make_sampler(sched, SampleConfig(sampler=sampler, steps=steps))
    rec = DenoiseRecorder(smp.timesteps.tolist(), sched.alphas_cumprod, frames=frames)
    sample(eps, smp, (16, 3, 32, 32), generator=torch.Generator().manual_seed(0), callback=rec)
    return rec.save(tmp_path / f"{sampler}.gif"), rec


def test_denoising_gif_is_small_and_holds_the_sample(sched: NoiseSchedule, tmp_path: Path):
    path, rec = _denoise_gif(sched, tmp_path, "ddpm", 100)
    size_kib = path.stat().st_size / 1024
    # 16 faces of 32 px, 40 frames of x_t beside x̂_0: fresh DDPM noise in every x_t grid costs
    # ~15 KiB a frame; before, one upscaled grid a frame made 2 MB
    assert size_kib < 800, size_kib
    with Image.open(path) as im:
        assert im.n_frames == 40
        assert im.size == (2 * 138 + 4 * PAD, im.size[1])  # two native 138 px grids, not upscaled
        durations = []
        for k in range(im.n_frames):
            im.seek(k)
            durations.append(im.info["duration"])
        last = np.asarray(im.convert("RGB"))
    assert durations[-1] == 2500 and set(durations[:-1]) == {100}
    # the held frame is the sample, in both grids: no noise left
    h, w = last.shape[:2]
    grid = 138
    left = last[PAD + 16 : PAD + 16 + grid, PAD : PAD + grid].astype(int)
    right = last[PAD + 16 : PAD + 16 + grid, 3 * PAD + grid : 3 * PAD + 2 * grid].astype(int)
    assert np.abs(left - right).mean() < 6
    # DDIM keeps one noise pattern from frame to frame, which the GIF stores as changes only
    ddim, _ = _denoise_gif(sched, tmp_path, "ddim", 50)
    assert ddim.stat().st_size < 0.75 * path.stat().st_size


def test_recorder_with_few_steps_and_errors(sched: NoiseSchedule, tmp_path: Path):
    _, rec = _denoise_gif(sched, tmp_path, "dpmsolver++", 5)
    assert len(rec.frames) == 6  # x_T, 4 states between, the sample: every state when few
    with pytest.raises(ValueError, match="no frames"):
        DenoiseRecorder([999, 0], sched.alphas_cumprod).save(tmp_path / "none.gif")
    with pytest.raises(ValueError, match="timesteps"):
        DenoiseRecorder([], sched.alphas_cumprod)
    assert not math.isinf(float(log_snr(sched.alphas_cumprod).min()))
