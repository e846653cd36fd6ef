"""`ddpmkit sample`: images, a grid and optionally a GIF of the denoising, from a checkpoint."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch
import typer
from typing_extensions import Annotated

from ddpmkit.cli.common import ConfigOpt, PresetOpt, SetOpt, console, resolve_settings, user_errors
from ddpmkit.errors import DdpmkitError
from ddpmkit.io_utils import free_dir
from ddpmkit.settings import SampleConfig, format_validation_error, read_yaml, parse_assignment
from pydantic import ValidationError


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
    from ddpmkit.device import resolve_device
    from ddpmkit.generate import generate, load_for_sampling
    from ddpmkit.images import make_grid_image, save_gif, save_grid, save_images, upscale_nearest

    asked = resolve_settings(config, preset, sets, {"train": {"device": device}})
    dev = resolve_device(asked.train.device)
    path = checkpoint or asked.train.run_dir
    model, settings, step = load_for_sampling(path, dev, use_ema=not no_ema, fallback_settings=asked)
    # sampling options: the command line, then --config/--set sample.*, then the checkpoint's own
    user = dict(read_yaml(config, "config file").get("sample", {}) if config else {})
    for assignment in sets or []:
        user.update(parse_assignment(assignment).get("sample", {}))
    updates = {"n": n, "seed": seed, "sampler": sampler, "steps": steps, "eta": eta, "batch_size": batch_size}
    user.update({k: v for k, v in updates.items() if v is not None})
    try:
        cfg = SampleConfig.model_validate({**settings.sample.model_dump(), **user})
    except ValidationError as e:
        raise DdpmkitError(format_validation_error(e, "sample options")) from None

    run_name = Path(path).resolve().name
    label = f"{run_name}-step{step}-{cfg.sampler}{cfg.steps or ''}-seed{cfg.seed}"
    if out is not None:
        if out.exists() and any(out.iterdir()) and not force:
            raise DdpmkitError(f"output folder {out} already holds files; pass --force or choose another --out")
        out_dir = out
    else:
        out_dir = free_dir(cfg.out_dir / label)
    out_dir.mkdir(parents=True, exist_ok=True)

    frames: list = []
    total_steps = cfg.steps or (settings.diffusion.timesteps if cfg.sampler == "ddpm" else 50)
    keep = set(torch.linspace(0, total_steps - 1, min(cfg.gif_frames, total_steps)).round().long().tolist())

    def on_step(i: int, t: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        if i in keep:
            frames.append(upscale_nearest(make_grid_image(x[:16].clamp(-1, 1).cpu()), 256))

    console.print(f"sampling {cfg.n} images with {cfg.sampler} ({total_steps} steps) on {dev} from step {step}", markup=False)
    t0 = time.perf_counter()
    images = []
    if gif:
        frames.append(None)  # x_T, filled below from the same seed
    for x in generate(model, settings, cfg.n, seed=cfg.seed, batch_size=cfg.batch_size, device=dev, sample_cfg=cfg, callback=on_step if gif else None):
        images.append(x.cpu())
    x = torch.cat(images)
    save_grid(x, out_dir / "grid.png")
    save_images(x, out_dir / "images")
    if gif:
        shape = (min(cfg.batch_size, cfg.n), *x.shape[1:])
        x_T = torch.randn(shape, generator=torch.Generator(device=dev).manual_seed(cfg.seed), device=dev)
        frames[0] = upscale_nearest(make_grid_image(x_T[:16].clamp(-1, 1).cpu()), 256)
        save_gif(frames, out_dir / "denoise.gif")
    console.print(
        f"wrote {cfg.n} images in {time.perf_counter() - t0:.1f}s to {out_dir}"
        f" (grid.png, images/{', denoise.gif' if gif else ''})",
        markup=False,
    )
