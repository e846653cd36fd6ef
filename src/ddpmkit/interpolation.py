"""Walks from one face to another: two starting noises, slerped, decoded with deterministic DDIM.

The two x_T come either from seeds or from real images:
- seeds: x_T of seed s is exactly the x_T that `ddpmkit sample --seed s` draws for its image 0
  (`PerImageNoise`), so with the same DDIM steps the two ends are those samples;
- images: each image is cropped and resized as the run's training data was (`data.crops`) and
  encoded to its x_T by DDIM inversion (`samplers.inversion`).
The path between them is spherical (`samplers.slerp`) and every point is decoded by the same
η = 0 DDIM, so neighbouring frames differ only as much as their noises do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from PIL import Image
from torch import Tensor

from ddpmkit.diffusion import EpsModel
from ddpmkit.generate import OpenRun
from ddpmkit.images import make_grid_image, save_gif, save_grid, save_images, scale_nearest
from ddpmkit.samplers import PerImageNoise, Sampler, make_sampler, sample
from ddpmkit.samplers.inversion import ddim_invert, invertible_ddim
from ddpmkit.samplers.slerp import slerp_path
from ddpmkit.settings import SampleConfig

GIF_MIN_SIDE = 128  # GIF frames are enlarged (nearest) to at least this side
FRAME_MS = 100  # each GIF frame's time
HOLD_MS = 1000  # a forward GIF holds its last frame


def seed_noise(seed: int, shape: tuple[int, int, int], device: torch.device | str) -> Tensor:
    """x_T of image 0 of `seed`, (1, C, H, W) float32 on device: the very draw `generate` makes."""
    return PerImageNoise(seed, 0, 1, device).randn((1, *shape))


def decode(
    eps_model: EpsModel,
    sampler: Sampler,
    x_T: Tensor,
    batch_size: int,
    on_batch: Optional[Callable[[int], None]] = None,
) -> Tensor:
    """Decode starting noises with a deterministic sampler. x_T: (F, C, H, W) on the device.

    Returns (F, C, H, W) in [-1, 1] (clamped, as `generate` does), on x_T's device. on_batch(done)
    after each batch of at most batch_size."""
    out = []
    for first in range(0, len(x_T), batch_size):
        z = x_T[first : first + batch_size]
        x = sample(eps_model, sampler, tuple(z.shape), x_T=z, device=z.device)
        out.append(x.clamp(-1, 1))
        if on_batch is not None:
            on_batch(first + len(z))
    return torch.cat(out)


def save_strip(frames: Tensor, path: Path, scale: Optional[int] = None) -> Path:
    """The frames side by side, one row, enlarged like every grid (`images.save_grid`).
    frames: (F, 3, H, W) in [-1, 1]."""
    return save_grid(frames, path, nrow=len(frames), scale=scale)


def gif_frames(frames: Tensor, bounce: bool) -> list[Image.Image]:
    """Each frame as a picture enlarged to >= GIF_MIN_SIDE; bounce: there and back (a seamless loop)."""
    factor = max(1, math.ceil(GIF_MIN_SIDE / frames.shape[-1]))
    pictures = [scale_nearest(make_grid_image(f.unsqueeze(0)), factor) for f in frames]
    return pictures + pictures[-2:0:-1] if bounce else pictures


def save_interpolation_gif(frames: Tensor, path: Path, bounce: bool = True) -> Path:
    """The walk as an animated GIF, FRAME_MS a frame; forward (not bounce) holds the last frame."""
    return save_gif(gif_frames(frames, bounce), path, duration_ms=FRAME_MS, hold_last_ms=FRAME_MS if bounce else HOLD_MS)


def reconstruction_error(x: Tensor, target: Tensor) -> tuple[float, float]:
    """(mean absolute error in 8-bit levels, PSNR in dB) of x against target, both in [-1, 1]."""
    diff = (x.float() - target.float()) * 127.5
    mse = float(diff.square().mean())
    psnr = math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)
    return float(diff.abs().mean()), psnr


@dataclass
class Walk:
    """A decoded walk: frames (F, 3, H, W) in [-1, 1]; from images also the two inputs (2, 3, H, W)
    as the model saw them. All on the CPU."""

    frames: Tensor
    inputs: Optional[Tensor] = None


def walk_sampler(run: OpenRun, cfg: SampleConfig, from_images: bool) -> Sampler:
    """Deterministic DDIM with cfg.steps steps; from images, the one DDIM inversion can undo."""
    if from_images:
        return invertible_ddim(run.sched, cfg.steps, cfg.spacing)
    return make_sampler(run.sched, cfg)


def walk_calls(sampler: Sampler, frames: int, batch_size: int, from_images: bool, refine: int) -> int:
    """Network calls a walk makes: decoding every batch of frames, and inverting the two images."""
    n = len(sampler.timesteps)
    return n * -(-frames // batch_size) + (n * (1 + refine) if from_images else 0)


def walk(run: OpenRun, sampler: Sampler, ends: list[int] | list[Tensor], frames: int, batch_size: int, *,
         refine: int = 0, eps_wrap: Optional[Callable[[EpsModel], EpsModel]] = None,
         on_batch: Optional[Callable[[int], None]] = None) -> Walk:
    """The walk between two seeds (their x_T as `sample` draws image 0) or two images ((1, 3, S, S)
    in [-1, 1], encoded to x_T by DDIM inversion with `refine` extra calls a step): the slerp path
    decoded by `sampler` in batches (on_batch(done) after each). eps_wrap may wrap the ε-model."""
    eps = run.denoiser.eps()
    eps = eps_wrap(eps) if eps_wrap is not None else eps
    dev = run.denoiser.device
    inputs = None
    if isinstance(ends[0], Tensor):
        x0 = torch.cat(list(ends)).to(dev)
        z = ddim_invert(eps, sampler, x0, refine=refine)
        inputs, z0, z1 = x0.cpu(), z[:1], z[1:]
    else:
        z0, z1 = seed_noise(int(ends[0]), run.shape, dev), seed_noise(int(ends[1]), run.shape, dev)
    path = decode(eps, sampler, slerp_path(z0, z1, frames), batch_size, on_batch=on_batch)
    return Walk(path.cpu(), inputs)


def write_walk(out_dir: Path, result: Walk, scale: Optional[int], bounce: bool) -> list[tuple[float, float]]:
    """strip.png, interpolation.gif, frames/frame_NNNNN.png; from images, inputs.png (the two
    images as the model saw them). Returns, from images, each end's (mean error in 8-bit levels,
    PSNR) against its input; else []."""
    x = result.frames
    save_strip(x, out_dir / "strip.png", scale)
    save_interpolation_gif(x, out_dir / "interpolation.gif", bounce)
    (out_dir / "frames").mkdir(exist_ok=True)
    save_images(x, out_dir / "frames", prefix="frame")
    if result.inputs is None:
        return []
    save_grid(result.inputs, out_dir / "inputs.png", nrow=2, scale=scale)
    return [reconstruction_error(x[0], result.inputs[0]), reconstruction_error(x[-1], result.inputs[1])]
