"""What every subcommand shares: the consoles, error handling, settings resolution, and the steps
of the commands that sample from a run (open it, name the output folder, count network calls)."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

import typer
from pydantic import ValidationError
from rich.markup import escape
from typing_extensions import Annotated

from ddpmkit.errors import DdpmkitError
from ddpmkit.io_utils import free_dir
from ddpmkit.progress import make_console
from ddpmkit.runfolder import RunFolder, newest_run
from ddpmkit.settings import (
    DEFAULT_PRESET,
    PRESET_MACHINE,
    SampleConfig,
    Settings,
    available_presets,
    build_settings,
    format_validation_error,
    parse_assignment,
    read_yaml,
)

if TYPE_CHECKING:
    from torch import Tensor

    from ddpmkit.generate import OpenRun

# stderr for messages and progress, stdout for results; neither wraps lines when piped to a file
console = make_console(stderr=True)
out = make_console(stderr=False)

ConfigOpt = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="YAML settings file (overrides the preset).")
]
_PRESETS = ", ".join(f"{p} ({PRESET_MACHINE.get(p, 'gpu').upper()})" for p in available_presets())
PresetOpt = Annotated[
    Optional[str], typer.Option("--preset", help=f"Starting settings: {_PRESETS}.")
]

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn DdpmkitError into `error: <one line>` and exit status 2; Ctrl-C into status 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DdpmkitError as e:
            console.print(f"[bold red]error:[/] {e}", markup=True, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def resolve_settings(
    config: Optional[Path],
    preset: Optional[str],
    sets: Optional[list[str]],
    overrides: Optional[dict[str, Any]] = None,
) -> Settings:
    return build_settings(preset=preset, config=config, overrides=overrides, sets=sets)


def resolve_sample_config(
    stored: SampleConfig,
    T: int,
    config: Optional[Path],
    sets: Optional[list[str]],
    options: dict[str, Any],
) -> SampleConfig:
    """The sampling settings of one command, steps resolved (None -> the sampler's default).

    Lowest first: the checkpoint's own `sample` section, then --config's, then --set sample.*,
    then the command's options (None = not given).
    """
    # lazy: the samplers import torch, which `ddpmkit --help` must not load
    from ddpmkit.samplers import default_steps

    user = {**asked_sample(config, sets), **{k: v for k, v in options.items() if v is not None}}
    try:
        cfg = SampleConfig.model_validate({**stored.model_dump(), **user})
    except ValidationError as e:
        field = str(e.errors()[0]["loc"][0])
        if options.get(field) is not None:  # name the option the user typed
            msg = e.errors()[0]["msg"].removeprefix("Value error, ")
            raise DdpmkitError(f"--{field.replace('_', '-')} {options[field]}: {msg}") from None
        raise DdpmkitError(format_validation_error(e, "sample options")) from None
    steps = cfg.steps or default_steps(cfg.sampler, T)
    if steps > T:
        raise DdpmkitError(f"--steps {steps} is more than the model's T = {T} diffusion steps")
    return cfg.model_copy(update={"steps": steps})


def asked_sample(config: Optional[Path], sets: Optional[list[str]]) -> dict[str, Any]:
    """The sampling settings a user asked for on top of a run's own: --config's `sample` section,
    then each --set sample.KEY=VALUE (unchecked: the run's settings are needed to check them)."""
    user = dict(read_yaml(config, "config file").get("sample", {}) if config else {})
    for assignment in sets or []:
        user.update(parse_assignment(assignment).get("sample", {}))
    return user


def is_tty() -> bool:
    return sys.stderr.isatty()


@functools.lru_cache(maxsize=None)
def _preset_settings(preset: str) -> Settings:
    return build_settings(preset=preset)


def from_preset(help_text: str, key: str, preset: str = DEFAULT_PRESET, what: str = "preset") -> str:
    """`help_text` with the default that `section.key` takes from the preset, e.g.
    "Stop after this many steps. [default: from preset; demo: 1500]" (nothing added where the
    preset leaves it unset). For --help: reads one YAML file, never imports torch."""
    section, name = key.split(".")
    value = getattr(getattr(_preset_settings(preset), section), name)
    if value is None:
        return help_text
    if isinstance(value, bool):
        value = "on" if value else "off"
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = f"{value:,}" if isinstance(value, int) else f"{value:g}"
    return f"{help_text} " + escape(f"[default: from {what}; {preset}: {value}]")


def default_is(text: str) -> str:
    """A help text's "[default: ...]" for a default that is not a plain value (rich-escaped)."""
    return escape(f"[default: {text}]")


def open_run(run: Optional[Path], asked: "Settings", no_ema: bool, device: Any = None) -> tuple["OpenRun", bool]:
    """RUN (else the newest run under runs/ with a checkpoint) opened for sampling on `device`
    (default: the asked train.device); `asked` describes foreign weights. Returns (the run,
    whether it was the newest)."""
    # lazy: torch and the model code load when a command runs, not for `ddpmkit --help`
    from ddpmkit.device import resolve_device
    from ddpmkit.generate import load_run

    path = run if run is not None else newest_run(need_checkpoint=True)
    dev = device if device is not None else resolve_device(asked.train.device)
    return load_run(path, dev, ema=not no_ema, fallback_settings=asked), run is None


def say_which_run(run: "OpenRun", newest: bool, doing: str) -> None:
    """Say which run a command took when it took the newest one ("sampling from the newest run:
    ..."), and warn when the checkpoint is far short of its run's plan (`short_of_plan`)."""
    from ddpmkit.checkpoint import resolve_checkpoint  # lazy: torch

    if newest:
        console.print(f"{doing} the newest run: {run.path} (step {run.step:,})", markup=False)
    short = short_of_plan(resolve_checkpoint(run.path).path, run.step)
    if short:
        console.print(f"[yellow]warning:[/] {short}", soft_wrap=True)


def short_of_plan(ckpt: Path, step: int) -> Optional[str]:
    """A warning when the checkpoint is far short of its run's planned steps (total_steps in its run info)."""
    run = RunFolder.of_checkpoint(ckpt) or RunFolder(ckpt)
    total = run.read_info().get("total_steps")
    if not isinstance(total, int) or total <= 0 or step >= total / 2:
        return None
    outcome = "samples will be noise" if step < total / 10 else "samples will be rough"
    return f"step {step:,} of {total:,}: {outcome} (train on: ddpmkit train --run-dir {run.path} --resume)"


def output_folder(out: Optional[Path], force: bool, default: Path) -> Path:
    """--out (refused if it holds files, unless --force), else a fresh folder named after the run.
    Checks that it can be made (no file in its place or above it, a writable parent); makes nothing."""
    if out is not None:
        if out.is_dir() and any(out.iterdir()) and not force:
            raise DdpmkitError(f"output folder {out} already holds files; pass --force or choose another --out")
        target = out
    else:
        target = free_dir(default)
    for p in [target, *target.parents]:
        if not p.exists():
            continue
        if not p.is_dir():
            where = f"output folder {target}" if p == target else f"{p} (on the way to {target})"
            raise DdpmkitError(f"{where} is a file, not a folder: choose another --out")
        if not os.access(p, os.W_OK | os.X_OK):
            raise DdpmkitError(f"cannot write into {p} (permission denied): choose another --out")
        break
    return target


def counted(eps: Callable[..., "Tensor"], on_call: Callable[[int], None]) -> Callable[..., "Tensor"]:
    """eps(x_t, t) that reports the number of network calls so far after each one."""
    calls = 0

    def eps_counted(x: "Tensor", t: "Tensor") -> "Tensor":
        nonlocal calls
        e = eps(x, t)
        calls += 1
        on_call(calls)
        return e

    return eps_counted
