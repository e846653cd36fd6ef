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
from pathlib import Path
from typing import Callable, Optional

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ddpmkit.data.crops import load_square
from ddpmkit.diffusion import EpsModel
from ddpmkit.errors import DdpmkitError
from ddpmkit.images import make_grid_image, save_gif, save_grid, scale_nearest
from ddpmkit.samplers import PerImageNoise, Sampler, sample

GIF_MIN_SIDE = 128  # GIF frames are enlarged (nearest) to at least this side
FRAME_MS = 100  # each GIF frame's time
HOLD_MS = 1000  # a forward GIF holds its last frame


def seed_noise(seed: int, shape: tuple[int, int, int], device: torch.device | str) -> Tensor:
    """x_T of image 0 of `seed`, (1, C, H, W) float32 on device: the very draw `generate` makes."""
    return PerImageNoise(seed, 0, 1, device).randn((1, *shape))


def load_face(path: Path, crop: str, size: int) -> Tensor:
    """One image as the run's data was prepared: (1, 3, size, size) float32 in [-1, 1], on the CPU.

    crop: the run's data.crop (CelebA boxes; other aspect ratios: the centre square)."""
    if not path.exists():
        raise DdpmkitError(f"image not found: {path}")
    if path.is_dir():
        raise DdpmkitError(f"expected an image file, got a directory: {path}")
    try:
        pixels = load_square(str(path), crop, size)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        reason = "not a readable image file" if isinstance(e, UnidentifiedImageError) else str(e).splitlines()[0]
        raise DdpmkitError(f"cannot read image {path}: {reason or type(e).__name__}") from None
    return (torch.from_numpy(pixels.copy()).float() / 127.5 - 1.0).unsqueeze(0)


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
