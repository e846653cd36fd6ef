"""What `ddpmkit inpaint` (and the served page) needs beside the math: the face and the mask as the
run's data was made, RePaint over the run's DDPM chain, fills batch by batch with the known pixels
pasted back exactly, and the pictures.

The face is cropped and resized as the run's data was (`data.crops`: the run's crop for CelebA
and folders, the centre square for the demo faces) or is demo face K (`demo:K`), drawn from a
stream no run trains on. The math is `samplers.repaint`; the masks are `masks`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from PIL import Image
from torch import Tensor

from ddpmkit.errors import DdpmkitError
from ddpmkit.generate import OpenRun
from ddpmkit.faces import data_crop, demo_index, read_face
from ddpmkit.images import from_uint8, save_grid, save_png, to_uint8
from ddpmkit.masks import MASKS, resolve_mask
from ddpmkit.diffusion import EpsModel
from ddpmkit.samplers import DDPMSampler, PerImageNoise, StepCallback
from ddpmkit.samplers.repaint import RePaint
from ddpmkit.settings import MAX_SEED, Settings

GRID_ROW = 10  # pictures a row of grid.png holds
TINT = (1.0, -1.0, 1.0)  # magenta, in [-1, 1]: the region to fill on the mask picture


@dataclass(frozen=True)
class Face:
    """The face to fill and what to fill: pixels (3, S, S) uint8, fill (S, S) bool (True = fill)."""

    pixels: Tensor
    fill: Tensor
    name: str  # for folder names: the file's stem, or demoK
    mask_name: str  # a built-in mask's name, or mask-STEM for a PNG


def face_and_mask(image: str | Path, mask: str, seed: int, settings: Settings) -> Face:
    """The input as the run's data was made and the mask (`masks.resolve_mask`: a built-in name
    or a PNG, white = fill). One-line errors for an unreadable image or mask."""
    crop, layout = data_crop(settings)
    pixels, image_size = read_face(image, settings)
    k = demo_index(image)
    name = f"demo{k}" if k is not None else Path(image).stem
    fill = resolve_mask(mask, settings.data.size, layout=layout, seed=seed, image_size=image_size, crop=crop)
    mask_name = mask.lower() if mask.lower() in MASKS else "mask-" + Path(mask).stem
    return Face(pixels, fill, name, mask_name)


def check_options(n: int, steps: int, jump: int, resample: int, seed: int, batch_size: Optional[int], T: int) -> None:
    """Refuse out-of-range settings before anything is written."""
    if not 1 <= n <= 10_000:
        raise DdpmkitError(f"--n {n} is out of range: 1 to 10,000")
    if not 1 <= steps <= T:
        raise DdpmkitError(f"--steps {steps} is out of range: 1 to the model's T = {T}")
    if jump < 1 or resample < 1:
        raise DdpmkitError(f"--jump {jump} and --resample {resample} must both be at least 1")
    if resample > 1 and jump >= steps:
        raise DdpmkitError(f"--jump {jump} must be less than --steps {steps} to resample (or --resample 1)")
    if not 0 <= seed <= MAX_SEED:
        raise DdpmkitError(f"--seed {seed} is out of range: 0 to {MAX_SEED:,}")
    if batch_size is not None and batch_size < 1:
        raise DdpmkitError(f"--batch-size {batch_size} must be at least 1")


def repaint_chain(run: OpenRun, steps: int, jump: int, resample: int) -> RePaint:
    """RePaint over the run's DDPM chain respaced to `steps` (the run's spacing, variance and
    x̂_0 handling)."""
    s = run.settings.sample
    smp = DDPMSampler(run.sched, s.spacing, s.variance, s.x0)
    smp.set_timesteps(steps)
    return RePaint(smp, jump, resample)


def fills(run: OpenRun, repaint: RePaint, face: Face, *, n: int, seed: int, batch_size: int,
          callback: Optional[StepCallback] = None,
          eps_wrap: Optional[Callable[[EpsModel], EpsModel]] = None) -> Iterator[Tensor]:
    """n fills in batches, each (b, 3, S, S) uint8 with the known pixels pasted from the input
    after quantisation (exactly the input's). Fill i draws its noise from (seed, i), so it is the
    same for any batch size. `callback` sees the first batch's steps; `eps_wrap(eps)` may wrap
    the ε-model (e.g. to count network calls)."""
    dev = run.denoiser.device
    eps = run.denoiser.eps()
    eps = eps_wrap(eps) if eps_wrap is not None else eps
    x0 = from_uint8(face.pixels).unsqueeze(0).to(dev)
    mask = face.fill[None, None].to(dev)
    done = 0
    while done < n:
        b = min(batch_size, n - done)
        x = repaint.inpaint(eps, x0.expand(b, -1, -1, -1), mask, generator=PerImageNoise(seed, done, b, dev),
                            callback=callback if done == 0 else None)
        yield torch.where(face.fill, to_uint8(x.clamp(-1, 1)).cpu(), face.pixels)
        done += b


def save_fills(batch: Tensor, folder: Path, first: int) -> None:
    """batch (b, 3, S, S) uint8 as folder/fill_NNNNN.png, numbered from `first`."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, img in enumerate(batch):
        save_png(Image.fromarray(img.permute(1, 2, 0).contiguous().numpy()), folder / f"fill_{first + k:05d}.png")


def mask_overlay(face: Face) -> Tensor:
    """The input with the region to fill tinted magenta: (3, S, S) in [-1, 1]."""
    x = from_uint8(face.pixels)
    tint = torch.tensor(TINT).reshape(3, 1, 1)
    return torch.where(face.fill, 0.35 * x + 0.65 * tint, x)


def write_pictures(out_dir: Path, face: Face, filled: Tensor) -> None:
    """grid.png (input | mask on the input | the fills), input.png and mask.png (white = fill).
    filled: (n, 3, S, S) uint8."""
    x = from_uint8(face.pixels)
    pictures = torch.cat([x[None], mask_overlay(face)[None], from_uint8(filled)])
    save_grid(pictures, out_dir / "grid.png", nrow=min(GRID_ROW, len(pictures)))
    save_png(Image.fromarray(face.pixels.permute(1, 2, 0).contiguous().numpy()), out_dir / "input.png")
    save_png(Image.fromarray(face.fill.numpy().astype("uint8") * 255, "L"), out_dir / "mask.png")
