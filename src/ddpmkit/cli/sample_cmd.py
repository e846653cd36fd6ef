"""`ddpmkit sample`: images, a grid and optionally a GIF of the denoising, from a checkpoint."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import typer
from typing_extensions import Annotated

from ddpmkit.cli.common import (
    ConfigOpt,
    PresetOpt,
    SetOpt,
    console,
    resolve_sample_config,
    resolve_settings,
    user_errors,
)
from ddpmkit.errors import DdpmkitError
from ddpmkit.io_utils import free_dir

if TYPE_CHECKING:
    from PIL import Image

    from ddpmkit.settings import SampleConfig


@user_errors
def sample(
    checkpoint: Annotated[Optional[Path], typer.Argument(help="Run directory, checkpoint folder or .safetensors (default: the settings' run_dir).")] = None,
    n: Annotated[Optional[int], typer.Option("--n", help="Number of images.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed: the same seed gives the same images.")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="ddpm, ddim or dpmsolver++.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Network calls (default: T for ddpm, 50 otherwise).")] = None,
    eta: Annotated[Optional[float], typer.Option(help="DDIM η: 0 deterministic, 1 DDPM-like.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size")] = None,
    gif: Annotated[bool, typer.Option("--gif", help="Also write denoise.gif: x_T to x_0.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: outputs/samples/RUN-stepN-...).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Write into --out even if it holds files.")] = False,
    no_ema: Annotated[bool, typer.Option("--no-ema", help="Use the raw weights instead of the EMA.")] = False,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    sets: SetOpt = None,
) -> None:
    """Generate faces with a trained model: grid.png, images/*.png and (--gif) denoise.gif."""
    # lazy: torch and the model code load when the command runs, not for `ddpmkit --help`
    import torch

    from ddpmkit.checkpoint import load_model
    from ddpmkit.device import resolve_device
    from ddpmkit.generate import eps_fn, generate
    from ddpmkit.images import save_gif, save_grid, save_images
    from ddpmkit.samplers import make_sampler
    from ddpmkit.schedule import NoiseSchedule

    asked = resolve_settings(config, preset, sets, {"train": {"device": device}})
    dev = resolve_device(asked.train.device)
    path = checkpoint or asked.train.run_dir
    model, settings, step = load_model(path, dev, use_ema=not no_ema, fallback_settings=asked)
    options = {"n": n, "seed": seed, "sampler": sampler, "steps": steps, "eta": eta, "batch_size": batch_size}
    cfg = resolve_sample_config(settings.sample, settings.diffusion.timesteps, config, sets, options)
    smp = make_sampler(NoiseSchedule.from_config(settings.diffusion).to(dev), cfg)
    label = f"{Path(path).resolve().name}-step{step}-{cfg.sampler}{cfg.steps}-seed{cfg.seed}"
    out_dir = _output_folder(out, force, cfg.out_dir / label)

    frames: list[Image.Image] = []
    console.print(f"sampling {cfg.n} images with {cfg.sampler} ({cfg.steps} steps) on {dev} from step {step}", markup=False)
    t0 = time.perf_counter()
    shape = (settings.model.in_channels, settings.data.size, settings.data.size)
    images = [x.cpu() for x in generate(eps_fn(model, dev), smp, cfg.n, shape, seed=cfg.seed, batch_size=cfg.batch_size,
                                        device=dev, callback=_gif_recorder(cfg, frames) if gif else None)]
    x = torch.cat(images)
    save_grid(x, out_dir / "grid.png")
    save_images(x, out_dir / "images")
    if gif:
        save_gif(frames, out_dir / "denoise.gif")
    console.print(
        f"wrote {cfg.n} images in {time.perf_counter() - t0:.1f}s to {out_dir}"
        f" (grid.png, images/{', denoise.gif' if gif else ''})",
        markup=False,
    )


def _output_folder(out: Optional[Path], force: bool, default: Path) -> Path:
    """--out (refused if it holds files, unless --force), else a fresh folder named after the run."""
    if out is not None:
        if out.exists() and not out.is_dir():
            raise DdpmkitError(f"--out {out} is a file, not a folder; choose another --out")
        if out.exists() and any(out.iterdir()) and not force:
            raise DdpmkitError(f"output folder {out} already holds files; pass --force or choose another --out")
        out_dir = out
    else:
        out_dir = free_dir(default)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _gif_recorder(cfg: "SampleConfig", frames: list["Image.Image"]) -> Callable[..., None]:
    """A sampling callback that appends up to cfg.gif_frames grids of x_t (x_T first) to `frames`."""
    import torch  # lazy, as in `sample`

    from ddpmkit.images import make_grid_image, upscale_nearest

    keep = set(torch.linspace(-1, cfg.steps - 1, min(cfg.gif_frames, cfg.steps + 1)).round().long().tolist())

    def on_step(i: int, t: int, x: Any, x0: Any) -> None:  # x: (B, C, H, W) x_t
        if i in keep:
            frames.append(upscale_nearest(make_grid_image(x[:16].clamp(-1, 1).cpu()), 256))

    return on_step
