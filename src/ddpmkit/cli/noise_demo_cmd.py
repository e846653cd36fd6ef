"""`ddpmkit noise-demo IMAGE`: show the forward process q(x_t | x_0) on one image.

Writes `grid.png` (one column per chosen t, labelled, with a bar for the noise level
√(1-ᾱ_t)) and `forward.gif` (x_t for t = 0..T-1), and prints the schedule at those t.
One fixed noise tensor ε is used throughout, x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε (DDPM eq. 4), so
the GIF shows the same noise growing over the image. If --out already holds files, the next free out-2, out-3 ... is used.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import torch
import typer
from PIL import Image, ImageDraw, ImageFont
from rich.table import Table
from torch import Tensor
from typing_extensions import Annotated

from ddpmkit.cli.common import ConfigOpt, PresetOpt, SetOpt, resolve_settings, user_errors
from ddpmkit.cli.common import out as stdout
from ddpmkit.diffusion import q_sample
from ddpmkit.errors import DdpmkitError
from ddpmkit.images import load_image, save_gif, save_png, to_uint8
from ddpmkit.io_utils import free_dir
from ddpmkit.schedule import NoiseSchedule

DEFAULT_TS = (0, 50, 100, 200, 400, 600, 800, 999)
_DEFAULT_TS_TEXT = ", ".join(map(str, DEFAULT_TS))
DEFAULT_OUT = Path("outputs/noise-demo")
PAD = 4  # pixels between and around the columns of grid.png
MIN_CELL = 64  # smaller images are enlarged (nearest) by a whole factor to at least this side
GIF_MIN_SIDE = 128


def cell_side(size: int, min_side: int = MIN_CELL) -> int:
    """The displayed side of a size x size image: enlarged by a whole factor to >= min_side."""
    return size * max(1, math.ceil(min_side / size))


def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=px)  # scalable font: Pillow >= 10.1 with FreeType
    except TypeError:
        return ImageFont.load_default()


def _text_centred(draw: ImageDraw.ImageDraw, cx: float, y: float, text: str, font, fill) -> None:
    """Draw text horizontally centred on cx with its top at y (any font, bitmap included)."""
    left, top, right, _ = draw.textbbox((0, 0), text, font=font)
    draw.text((cx - (right - left) / 2 - left, y - top), text, fill=fill, font=font)


def _font_px(side: int) -> int:
    return max(10, side // 9)


def strip_size(n: int, size: int) -> tuple[int, int]:
    """(width, height) of the grid.png strip for n timesteps of size x size images."""
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
        tile = Image.fromarray(imgs[k].permute(1, 2, 0).numpy())
        canvas.paste(tile.resize((side, side), Image.Resampling.NEAREST), (x0, PAD))
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


def _gif_frame(xt: Tensor, t: int, sqrt_ab: float) -> Image.Image:
    """One GIF frame: xt (3, S, S) in [-1, 1] enlarged to >= 128 px, with a caption band."""
    img = to_uint8(xt.unsqueeze(0))[0]
    side = cell_side(xt.shape[-1], GIF_MIN_SIDE)
    fpx = _font_px(side)
    frame = Image.new("RGB", (side, side + fpx + 8), (255, 255, 255))
    tile = Image.fromarray(img.permute(1, 2, 0).numpy())
    frame.paste(tile.resize((side, side), Image.Resampling.NEAREST), (0, 0))
    caption = f"t={t}  signal {sqrt_ab:.2f}"
    _text_centred(ImageDraw.Draw(frame), side / 2, side + 4, caption, _font(fpx), (0, 0, 0))
    return frame


def _schedule_table(sched: NoiseSchedule, ts: Sequence[int]) -> Table:
    table = Table(title=f"forward process q(x_t | x_0), T = {sched.T}")
    for name in ("t", "β_t", "ᾱ_t", "√ᾱ_t", "√(1-ᾱ_t)", "SNR = ᾱ/(1-ᾱ)"):
        table.add_column(name, justify="right")
    for t in ts:
        ab = float(sched.alphas_cumprod[t])
        snr = ab / (1.0 - ab) if ab < 1.0 else math.inf
        table.add_row(
            str(t), f"{float(sched.betas[t]):.5f}", f"{ab:.5f}", f"{math.sqrt(ab):.4f}",
            f"{math.sqrt(1.0 - ab):.4f}", f"{snr:.4g}",
        )
    return table


@user_errors
def noise_demo(
    image: Annotated[Path, typer.Argument(help="Image to noise (any format Pillow reads).", show_default=False)],
    t: Annotated[
        Optional[list[int]],
        typer.Option("--t", "-t", help=f"Timestep to show, 0..T-1 (repeatable; default {_DEFAULT_TS_TEXT})."),
    ] = None,
    size: Annotated[int, typer.Option("--size", help="Side of the centre-cropped, resized image, pixels.")] = 128,
    out: Annotated[Path, typer.Option("--out", help="Folder for grid.png and forward.gif.")] = DEFAULT_OUT,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the one noise tensor ε.")] = 0,
    frames: Annotated[int, typer.Option("--frames", help="GIF frames, spread over t = 0..T-1.")] = 50,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    sets: SetOpt = None,
) -> None:
    """Show the forward (noising) process on IMAGE: a labelled strip, a GIF and the schedule."""
    settings = resolve_settings(config, preset, sets)
    sched = NoiseSchedule.from_config(settings.diffusion)
    T = sched.T
    ts = sorted(set(t if t else DEFAULT_TS))
    for v in ts:
        if not 0 <= v < T:
            raise DdpmkitError(f"--t {v} is out of range: timesteps run 0..{T - 1} (T={T})")
    if not 8 <= size <= 1024:
        raise DdpmkitError(f"--size {size} is out of range: use 8..1024")
    if not 2 <= frames <= T:
        raise DdpmkitError(f"--frames {frames} is out of range: use 2..{T} (T={T})")

    x0 = load_image(image, size)  # (1, 3, S, S) in [-1, 1]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))

    def noised(steps: Sequence[int]) -> Tensor:
        tt = torch.tensor(list(steps), dtype=torch.long)
        n = len(tt)
        return q_sample(sched, x0.expand(n, -1, -1, -1), tt, noise.expand(n, -1, -1, -1))

    levels = [float(sched.sqrt_one_minus_alphas_cumprod[v]) for v in ts]
    out = free_dir(out)
    grid_path = save_png(noise_strip(noised(ts), ts, levels), out / "grid.png")

    gif_ts = torch.linspace(0, T - 1, frames).round().long().tolist()
    gif_frames = [
        _gif_frame(x, v, float(sched.sqrt_alphas_cumprod[v])) for x, v in zip(noised(gif_ts), gif_ts)
    ]
    gif_path = save_gif(gif_frames, out / "forward.gif", duration_ms=80, hold_last_ms=1000)

    stdout.print(_schedule_table(sched, ts))
    stdout.print(f"wrote {grid_path}")
    stdout.print(f"wrote {gif_path}")
