"""Labelled pictures of the forward process q(x_t | x_0): the strip and the GIF frames of noise-demo.

One fixed noise tensor ε is used throughout, x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε (DDPM eq. 4), so the
frames show the same noise growing over the image. Images are (B, 3, S, S) in [-1, 1]; small
ones are enlarged (nearest) by a whole factor so their pixels stay sharp.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ddpmkit.diffusion import q_sample
from ddpmkit.images import to_uint8
from ddpmkit.schedule import NoiseSchedule

PAD = 4  # pixels between and around the columns of the strip
MIN_CELL = 64  # strip images are enlarged to at least this side
GIF_MIN_SIDE = 128  # GIF frames are enlarged to at least this side

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def cell_side(size: int, min_side: int = MIN_CELL) -> int:
    """The displayed side of a size x size image: enlarged by a whole factor to >= min_side."""
    return size * max(1, math.ceil(min_side / size))


def _font(px: int) -> Font:
    try:
        return ImageFont.load_default(size=px)  # scalable font: Pillow >= 10.1 with FreeType
    except TypeError:
        return ImageFont.load_default()


def _font_px(side: int) -> int:
    return max(10, side // 9)


def _text_centred(draw: ImageDraw.ImageDraw, cx: float, y: float, text: str, font: Font, fill: tuple[int, ...]) -> None:
    """Draw text horizontally centred on cx with its top at y (any font, bitmap included)."""
    left, top, right, _ = draw.textbbox((0, 0), text, font=font)
    draw.text((cx - (right - left) / 2 - left, y - top), text, fill=fill, font=font)


def _tile(img: Tensor, side: int) -> Image.Image:
    """(3, S, S) uint8 -> an RGB image side x side (nearest)."""
    tile = Image.fromarray(img.permute(1, 2, 0).contiguous().numpy())
    return tile.resize((side, side), Image.Resampling.NEAREST)


def forward_samples(sched: NoiseSchedule, x0: Tensor, noise: Tensor, ts: Sequence[int]) -> Tensor:
    """x_t for each t in ts from one image and one noise tensor. x0, noise: (1, 3, S, S);
    returns (len(ts), 3, S, S)."""
    t = torch.tensor(list(ts), dtype=torch.long)
    n = len(t)
    return q_sample(sched, x0.expand(n, -1, -1, -1), t, noise.expand(n, -1, -1, -1))


def strip_size(n: int, size: int) -> tuple[int, int]:
    """(width, height) of the strip for n timesteps of size x size images."""
    side = cell_side(size)
    fpx = _font_px(side)
    # rows: image, "t=..." label, noise bar, "noise 0.22" label
    height = PAD + side + (fpx + 6) + 8 + (fpx + 6) + PAD
    return PAD + n * (side + PAD), height


def noise_strip(xt: Tensor, ts: Sequence[int], noise_levels: Sequence[float]) -> Image.Image:
    """The labelled strip: column k shows xt[k] with `t=ts[k]` under it, then a bar and the
    value of noise_levels[k] (= √(1-ᾱ_t), in [0, 1]). xt: (N, 3, S, S) in [-1, 1]."""
    n, size = xt.shape[0], xt.shape[-1]
    side = cell_side(size)
    width, height = strip_size(n, size)
    fpx = _font_px(side)
    font = _font(fpx)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    imgs = to_uint8(xt)
    for k in range(n):
        x0 = PAD + k * (side + PAD)
        canvas.paste(_tile(imgs[k], side), (x0, PAD))
        y = PAD + side + 3
        _text_centred(draw, x0 + side / 2, y, f"t={ts[k]}", font, (0, 0, 0))
        y += fpx + 6
        level = float(min(max(noise_levels[k], 0.0), 1.0))
        draw.rectangle([x0, y, x0 + side - 1, y + 5], outline=(150, 150, 150), fill=(235, 235, 235))
        if level > 0:
            draw.rectangle([x0, y, x0 + round((side - 1) * level), y + 5], fill=(200, 60, 50))
        y += 8 + 3
        _text_centred(draw, x0 + side / 2, y, f"noise {level:.2f}", font, (80, 80, 80))
    return canvas


def forward_frame(xt: Tensor, t: int, sqrt_ab: float) -> Image.Image:
    """One GIF frame: xt (3, S, S) in [-1, 1] enlarged to >= 128 px, captioned with t and the
    signal level √ᾱ_t."""
    side = cell_side(xt.shape[-1], GIF_MIN_SIDE)
    fpx = _font_px(side)
    frame = Image.new("RGB", (side, side + fpx + 8), (255, 255, 255))
    frame.paste(_tile(to_uint8(xt.unsqueeze(0))[0], side), (0, 0))
    caption = f"t={t}  signal {sqrt_ab:.2f}"
    _text_centred(ImageDraw.Draw(frame), side / 2, side + 4, caption, _font(fpx), (0, 0, 0))
    return frame


def forward_frames(sched: NoiseSchedule, x0: Tensor, noise: Tensor, ts: Sequence[int]) -> list[Image.Image]:
    """The GIF frames of x_t at each t in ts (see `forward_frame`)."""
    xs = forward_samples(sched, x0, noise, ts)
    return [forward_frame(x, t, float(sched.sqrt_alphas_cumprod[t])) for x, t in zip(xs, ts)]


def forward_strip(sched: NoiseSchedule, x0: Tensor, noise: Tensor, ts: Sequence[int]) -> Image.Image:
    """The labelled strip of x_t at each t in ts, each with its noise level √(1-ᾱ_t)."""
    levels = [float(sched.sqrt_one_minus_alphas_cumprod[t]) for t in ts]
    return noise_strip(forward_samples(sched, x0, noise, ts), ts, levels)


# PLACEHOLDER (replaced at merge by the pictures engineer's version)
from pathlib import Path  # noqa: E402

from ddpmkit.images import make_grid_image, save_gif, upscale_nearest  # noqa: E402


class DenoiseRecorder:
    """A sampling callback that keeps up to `frames` grids of x_t (x_T first) of the first
    `max_images` images, evenly spaced over the steps; `save` writes them as a GIF."""

    def __init__(self, timesteps: Sequence[int], alphas_cumprod: Tensor, frames: int = 40, max_images: int = 16) -> None:
        n = len(timesteps)
        self.keep = set(torch.linspace(-1, n - 1, min(frames, n + 1)).round().long().tolist())
        self.max_images = max_images
        self.frames: list[Image.Image] = []

    def __call__(self, i: int, t: int, x: Tensor, x0: Tensor | None) -> None:
        if i in self.keep:
            self.frames.append(upscale_nearest(make_grid_image(x[: self.max_images].clamp(-1, 1).cpu()), 256))

    def save(self, path: Path) -> Path:
        return save_gif(self.frames, path)
