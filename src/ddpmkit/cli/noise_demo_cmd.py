"""`ddpmkit noise-demo IMAGE`: show the forward process q(x_t | x_0) on one image.

Writes `forward_strip.png` (one column per chosen t) and `forward.gif` (x_t from t = 0 to T-1,
frames spaced evenly in log-SNR as in the denoising GIF),
both labelled alike: t, the signal √ᾱ_t and the noise √(1-ᾱ_t) of x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε,
and prints the schedule at those t. The pictures are drawn by `ddpmkit.pictures`. If --out
already holds files, the next free out-2, out-3 ... is used.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import typer
from rich.table import Table
from typing_extensions import Annotated

from ddpmkit.cli.common import ConfigOpt, PresetOpt, console, resolve_settings, user_errors
from ddpmkit.cli.common import out as stdout
from ddpmkit.cli.options import set_option
from ddpmkit.errors import DdpmkitError

if TYPE_CHECKING:
    from ddpmkit.schedule import NoiseSchedule

DEFAULT_TS = (0, 50, 100, 200, 400, 600, 800, 999)
_DEFAULT_TS_TEXT = ", ".join(map(str, DEFAULT_TS))
DEFAULT_OUT = Path("outputs/noise-demo")
STRIP_NAME = "forward_strip.png"
GIF_NAME = "forward.gif"
SetOpt = set_option("diffusion.schedule=cosine")


def _schedule_table(sched: "NoiseSchedule", ts: Sequence[int]) -> Table:
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
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="Image to noise (any format Pillow reads).", show_default=False)],
    t: Annotated[
        Optional[list[int]],
        typer.Option("--t", "-t", metavar="T", help=f"Timestep to show, 0..T-1 (repeatable; default {_DEFAULT_TS_TEXT})."),
    ] = None,
    size: Annotated[int, typer.Option("--size", help="Side of the centre-cropped, resized image, pixels.")] = 128,
    out: Annotated[Path, typer.Option("--out", help=f"Folder for {STRIP_NAME} and {GIF_NAME}.")] = DEFAULT_OUT,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the one noise tensor ε.")] = 0,
    frames: Annotated[int, typer.Option("--frames", help="GIF frames, t = 0 to T-1 spaced evenly in log-SNR (where the picture changes).")] = 50,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    sets: SetOpt = None,
) -> None:
    """Show the forward (noising) process on IMAGE: a labelled strip, a GIF and the schedule.

    Examples:
      ddpmkit noise-demo face.jpg
      ddpmkit noise-demo face.jpg --t 0 --t 250 --t 999 --size 64
      ddpmkit noise-demo face.jpg --set diffusion.schedule=cosine
    The schedule (T, linear or cosine β_t) comes from the preset, --config or --set.
    """
    # lazy: torch and the image code load when the command runs, not for `ddpmkit --help`
    import torch

    from ddpmkit.images import load_image, save_gif, save_png
    from ddpmkit.io_utils import free_dir
    from ddpmkit.pictures import forward_frames, forward_strip, snr_timesteps
    from ddpmkit.schedule import NoiseSchedule

    settings = resolve_settings(config, preset, sets)
    sched = NoiseSchedule.from_config(settings.diffusion)
    ts = sorted(set(t if t else DEFAULT_TS))
    _check(ts, size, frames, sched.T)

    x0 = load_image(image, size)  # (1, 3, S, S) in [-1, 1]
    console.print(
        f"noising {image} ({size} px) with the {settings.diffusion.schedule} schedule, T = {sched.T}: "
        f"a strip of {len(ts)} timesteps and a GIF of {frames} frames",
        markup=False, highlight=False, soft_wrap=True,
    )
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    out = free_dir(out)
    strip_path = save_png(forward_strip(sched, x0, noise, ts), out / STRIP_NAME)
    gif_ts = snr_timesteps(sched.alphas_cumprod, frames)
    gif_path = save_gif(forward_frames(sched, x0, noise, gif_ts), out / GIF_NAME, duration_ms=80, hold_last_ms=1000)

    stdout.print(_schedule_table(sched, ts))
    stdout.print(f"wrote {strip_path}", soft_wrap=True)
    stdout.print(f"wrote {gif_path}", soft_wrap=True)


def _check(ts: Sequence[int], size: int, frames: int, T: int) -> None:
    """Refuse out-of-range options before anything is read or written."""
    for v in ts:
        if not 0 <= v < T:
            raise DdpmkitError(f"--t {v} is out of range: timesteps run 0..{T - 1} (T={T})")
    if not 8 <= size <= 1024:
        raise DdpmkitError(f"--size {size} is out of range: use 8..1024")
    if not 2 <= frames <= T:
        raise DdpmkitError(f"--frames {frames} is out of range: use 2..{T} (T={T})")
