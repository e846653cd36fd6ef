"""`ddpmkit train`: resolve the settings, then hand them to `ddpmkit.train.train`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from ddpmkit.cli.common import ConfigOpt, PresetOpt, SetOpt, console, resolve_settings, user_errors


@user_errors
def train(
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    sets: SetOpt = None,
    epochs: Annotated[Optional[int], typer.Option(help="Train for this many epochs.")] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Stop after this many steps.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Global batch size.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate.")] = None,
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="Where checkpoints, logs and samples go.")] = None,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="CelebA root or image folder.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for weights, data order and noise.")] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the network.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --run-dir from its last checkpoint.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Train a DDPM. With no options: the demo preset on generated faces (CPU, minutes)."""
    # lazy: torch and the training code load when the command runs, not for `ddpmkit --help`
    from ddpmkit.train import train as run_training

    overrides = {
        "train": {
            "epochs": epochs,
            "max_steps": max_steps,
            "batch_size": batch_size,
            "lr": lr,
            "run_dir": str(run_dir) if run_dir else None,
            "device": device,
            "seed": seed,
            "compile": compile,
        },
        "data": {"root": str(data_root) if data_root else None},
    }
    settings = resolve_settings(config, preset, sets, overrides)
    saved = Path(settings.train.run_dir) / "config.yaml"
    if resume and config is None and preset is None and saved.exists():
        # the run's own settings, with this command's options on top
        settings = resolve_settings(saved, None, sets, overrides)
    # the length asked for on the command line is the length: a preset's other limit does not cut it short
    if epochs is not None and max_steps is None:
        settings.train.max_steps = None
    if max_steps is not None and epochs is None:
        settings.train.epochs = None
    result = run_training(settings, resume=resume, log=lambda m: console.print(m, markup=False), progress=progress)
    if result.interrupted:
        raise typer.Exit(130)
    console.print(
        f"done: step {result.step}, loss {result.last_loss:.4f}, checkpoint {result.checkpoint}", markup=False
    )
