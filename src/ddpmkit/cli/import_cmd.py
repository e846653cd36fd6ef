"""`ddpmkit import`: a diffusers UNet2DModel (a folder or a Hugging Face Hub id) as a ddpmkit run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from ddpmkit.cli.common import ConfigOpt, PresetOpt, console, out, user_errors
from ddpmkit.cli.options import set_option

SetOpt = set_option("sample.sampler=ddim")


@user_errors
def import_(
    src: Annotated[str, typer.Argument(metavar="SRC", help="A diffusers pipeline or UNet2DModel folder, or a Hub id such as google/ddpm-ema-celebahq-256 (needs the hub extra and internet).", show_default=False)],  # noqa: E501
    run_dir: Annotated[Path, typer.Option("--run-dir", help="The run folder to create (new, or empty).", show_default=False)],  # noqa: E501
    scheduler: Annotated[Optional[Path], typer.Option("--scheduler-json", metavar="FILE", help="The scheduler_config.json of the model's training, where SRC holds none.", show_default=False)] = None,  # noqa: E501
    revision: Annotated[Optional[str], typer.Option("--revision", help="For a Hub id: the branch, tag or commit.", show_default=False)] = None,  # noqa: E501
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    sets: SetOpt = None,
) -> None:
    """Make a run from a diffusers model: sample, inpaint, interpolate, fid, inspect and report work on it.

    Network and schedule come from SRC's config files; the training, sampling and FID settings from
    --preset (default celeba64), --config and --set.

    Weights are read from safetensors only.

    Examples:
      ddpmkit import google/ddpm-cifar10-32 --run-dir runs/cifar10
      ddpmkit import ./ddpm-ema-celebahq-256 --run-dir runs/celebahq
      ddpmkit sample runs/celebahq --n 4 --steps 50
    """
    from ddpmkit.interop.importer import import_diffusers  # lazy: torch loads when the command runs

    done = import_diffusers(src, run_dir, scheduler=scheduler, revision=revision, sets=sets, preset=preset,
                            config=config)
    m = done.settings.model
    origin = done.origin["source"] + (f" at {done.origin['revision'][:12]}" if done.origin.get("revision") else "")
    console.print(f"imported {origin}: {m.image_size}x{m.image_size} px, {done.parameters:,} parameters, "
                  f"{done.settings.diffusion.schedule} schedule over T = {done.settings.diffusion.timesteps}, "
                  f"predicting {done.settings.diffusion.prediction}", soft_wrap=True, markup=False)
    out.print(f"wrote run {done.run_dir}: ddpmkit sample {done.run_dir}", soft_wrap=True, markup=False)
