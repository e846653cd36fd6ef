"""`ddpmkit train`: resolve the settings (choosing a preset for the data found when none is named),
then hand them to `ddpmkit.train.train`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from typing_extensions import Annotated

from ddpmkit.cli.common import ConfigOpt, PresetOpt, console, default_is, from_preset, resolve_settings, user_errors
from ddpmkit.cli.options import DeviceOpt, set_option
from ddpmkit.errors import DdpmkitError
from ddpmkit.runfolder import RunFolder
from ddpmkit.settings import Settings, build_settings, parse_assignment, preset_name

if TYPE_CHECKING:
    from ddpmkit.train.plan import Choice

DATASETS = ("synthetic", "celeba", "folder")
SetOpt = set_option("train.lr=1e-4")


@user_errors
def train(
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    sets: SetOpt = None,
    size: Annotated[Optional[int], typer.Option("--size", help="Image side in pixels (data.size; the model follows it). " + default_is("the prepared CelebA's, else the preset's"), show_default=False)] = None,  # noqa: E501
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="synthetic (generated faces), celeba, or folder (images under --data-root). " + default_is("celeba when found or prepared, else synthetic"), show_default=False)] = None,  # noqa: E501
    epochs: Annotated[Optional[int], typer.Option(help=from_preset("Train for this many epochs.", "train.epochs"))] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help=from_preset("Stop after this many steps.", "train.max_steps"))] = None,
    time_budget: Annotated[Optional[str], typer.Option("--time", metavar="<duration>", help=from_preset("Train for this long (90s, 10m, 1h30m): steps and lr schedule fitted to this machine; --max-steps/--epochs win.", "train.time_budget"))] = None,  # noqa: E501
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help=from_preset("Global batch size.", "train.batch_size"))] = None,
    lr: Annotated[Optional[float], typer.Option(help=from_preset("Peak learning rate.", "train.lr"))] = None,
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help=from_preset("Where checkpoints, logs and samples go.", "train.run_dir"))] = None,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help=from_preset("CelebA root or image folder (env DDPMKIT_DATA_ROOT).", "data.root"))] = None,
    device: Annotated[Optional[str], typer.Option(help=from_preset("auto, cpu, cuda, cuda:N or mps.", "train.device"))] = None,
    seed: Annotated[Optional[int], typer.Option(help=from_preset("Seed for weights, data order and noise.", "train.seed"))] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", metavar="", help=from_preset("torch.compile the network (auto: on for CUDA; a failed compile falls back to eager).", "train.compile"))] = None,  # noqa: E501
    precision: Annotated[Optional[str], typer.Option("--precision", metavar="auto|bf16|fp16|fp32", help=from_preset("Mixed precision: auto = bf16 on CUDA cards with native bf16 (compute capability >= 8.0), fp16 with loss scaling on older ones, fp32 on CPU/MPS.", "train.precision"))] = None,  # noqa: E501
    condition: Annotated[Optional[str], typer.Option("--condition", help=from_preset("none, or attributes: condition on the data's binary attributes (CelebA's 40 from prepare, the demo faces' 11) with condition dropout train.p_uncond, for `sample --attr ... --guidance W`.", "train.condition"))] = None,  # noqa: E501
    resume: Annotated[bool, typer.Option("--resume", metavar="", help="Continue the run in --run-dir from its last checkpoint.")] = False,
    replan: Annotated[bool, typer.Option("--replan", metavar="", help="With --resume, for a run with a time budget: fit the rest of the run to --time (or its train.time_budget) from now, instead of keeping its planned steps.")] = False,  # noqa: E501
    progress: Annotated[bool, typer.Option("--progress/--no-progress", metavar="", show_default=False, help="A bar in a terminal, a plain line every train.log_every steps when piped (default); --no-progress: neither.")] = True,  # noqa: E501
) -> None:
    """Train a DDPM, printing its plan first (preset, parameters, data, batch, steps, device, ETA).

    Without --preset or --config the data decide: CelebA in data/celeba or prepared by `ddpmkit
    prepare` is trained at its prepared size with the preset for that size and machine (celeba32 on
    a CPU, celeba64 or celeba128 on a GPU); without CelebA, the demo on generated faces (CPU, minutes).

    Example: ddpmkit prepare --size 32 && ddpmkit train --time 30m
    """
    started = time.monotonic()  # a --time budget counts from here, torch's import included
    # lazy: torch and the training code load when the command runs, not for `ddpmkit --help`
    from ddpmkit.train import train as run_training

    _check_flags(dataset, replan, resume)
    overrides = {
        "train": {
            "epochs": epochs,
            "max_steps": max_steps,
            "time_budget": time_budget,
            "batch_size": batch_size,
            "lr": lr,
            "run_dir": str(run_dir) if run_dir else None,
            "device": device,
            "seed": seed,
            "compile": compile,
            "precision": precision,
            "condition": condition,
        },
        "data": {"root": str(data_root) if data_root else None, "size": size, "dataset": dataset},
    }
    settings, why = _settings(config, preset, sets, overrides, size, dataset, resume)
    _length_asked(settings, epochs, max_steps, time_budget)
    result = run_training(settings, resume=resume, log=lambda m: console.print(m, markup=False),
                          progress="auto" if progress else "off", why=why, replan=replan, started=started)
    if result.interrupted:
        raise typer.Exit(130)
    loss = f"{result.last_loss:.4f}" if result.last_loss == result.last_loss else "—"
    console.print(f"done: step {result.step}, loss {loss}, checkpoint {result.checkpoint}", markup=False)


def _check_flags(dataset: Optional[str], replan: bool, resume: bool) -> None:
    if dataset is not None and dataset not in DATASETS:
        raise DdpmkitError(f"--dataset {dataset!r} is not one of: {', '.join(DATASETS)}")
    if replan and not resume:
        raise DdpmkitError("--replan fits the rest of a resumed run to its time budget: use it with --resume")


def _length_asked(settings: Settings, epochs: Optional[int], max_steps: Optional[int], time_budget: Optional[str]) -> None:
    """The length asked for on the command line is the length: a preset's or file's other limit
    does not cut it short. Given together, --max-steps/--epochs win over --time (launch says so)."""
    tc = settings.train
    if epochs is not None and max_steps is None:
        tc.max_steps = None
    if max_steps is not None and epochs is None:
        tc.epochs = None
    if time_budget is not None and epochs is None and max_steps is None:
        tc.max_steps = tc.epochs = None
    if time_budget is None and (epochs is not None or max_steps is not None):
        tc.time_budget = None


def _settings(
    config: Optional[Path],
    preset: Optional[str],
    sets: Optional[list[str]],
    overrides: dict[str, Any],
    size: Optional[int],
    dataset: Optional[str],
    resume: bool,
) -> tuple[Settings, str]:
    """The run's settings and why its preset (for the plan line)."""
    from ddpmkit.train.plan import Choice, fit_to_size  # lazy, as run_training in train()

    if config is None and preset is None:
        choice = _chosen(sets, overrides, size, dataset)
        settings = build_settings(choice.preset, None, overrides, sets, preset_patch=choice.patch)
    else:
        patch, note = fit_to_size(preset_name(preset, config), size) if size is not None else ({}, None)
        choice = Choice(preset_name(preset, config), patch, "", note)
        settings = build_settings(preset, config, overrides, sets, preset_patch=patch)
    saved = RunFolder(settings.train.run_dir).config
    if resume and config is None and preset is None and saved.exists():
        # the run's own settings, with this command's options on top
        return resolve_settings(saved, None, sets, overrides), "the run's own settings"
    return settings, choice.explain(settings.model.attn_resolutions)


def _chosen(sets: Optional[list[str]], overrides: dict[str, Any], size: Optional[int],
            dataset: Optional[str]) -> "Choice":
    """No preset named: the one for the data found, its size and this machine (train/plan.py)."""
    # lazy: both import torch, which `ddpmkit --help` must not load
    from ddpmkit.device import resolve_device
    from ddpmkit.train.plan import choose_preset, machine_of

    # where to look and on what device: the data and device settings only, so a --set meant for
    # the chosen preset's model cannot fail against the demo's
    probe_sets = [s for s in sets or [] if s.strip().startswith(("data.", "train.device"))]
    probe = resolve_settings(None, None, probe_sets, overrides)
    asked = {k: v for s in probe_sets for k, v in parse_assignment(s).get("data", {}).items()}
    size = size if size is not None else asked.get("size")
    dataset = dataset if dataset is not None else asked.get("dataset")
    machine = machine_of(resolve_device(probe.train.device).type)
    return choose_preset(probe.data, machine, size, dataset)
