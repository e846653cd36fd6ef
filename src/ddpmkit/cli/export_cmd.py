"""`ddpmkit export`: a run's network as a diffusers DDPMPipeline folder (to load, or upload to the Hub)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from typing_extensions import Annotated

from ddpmkit.cli.common import console, out, user_errors
from ddpmkit.human import fmt_bytes


class Format(str, Enum):
    diffusers = "diffusers"


@user_errors
def export(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="Run directory, checkpoint folder or .safetensors to export.", show_default=False)],  # noqa: E501
    dest: Annotated[Path, typer.Argument(metavar="OUT", help="Folder to write (new, or empty; --force replaces one holding files).", show_default=False)],  # noqa: E501
    format: Annotated[Format, typer.Option("--format", help="What to write: diffusers (DDPMPipeline: UNet2DModel + DDPMScheduler).")] = Format.diffusers,  # noqa: E501
    no_ema: Annotated[bool, typer.Option("--no-ema", metavar="", help="Export the raw weights instead of the EMA.")] = False,
    force: Annotated[bool, typer.Option("--force", metavar="", help="Replace OUT even if it holds files.")] = False,
) -> None:
    """Write RUN's network as a folder diffusers loads: DDPMPipeline.from_pretrained(OUT).

    Examples:
      ddpmkit export runs/celeba64 exports/celeba64 --format diffusers
      hf upload NAME/celeba64-ddpm exports/celeba64   (the Hub's client)

    Attribute-conditioned runs are refused: UNet2DModel has no place for their condition.
    """
    from ddpmkit.interop.export import export_diffusers  # lazy: torch loads when the command runs

    done = export_diffusers(run, dest, use_ema=not no_ema, force=force)
    size = sum(p.stat().st_size for p in done.out.rglob("*") if p.is_file())
    console.print(f"exported {done.weights} (step {done.step:,}, {done.parameters:,} parameters)", soft_wrap=True,
                  markup=False)
    out.print(f"wrote {done.out} ({fmt_bytes(size)}): DDPMPipeline.from_pretrained('{done.out}')", soft_wrap=True,
              markup=False)
