"""Options and error handling shared by every subcommand."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import typer
from pydantic import ValidationError
from rich.markup import escape
from typing_extensions import Annotated

from ddpmkit.errors import DdpmkitError
from ddpmkit.progress import make_console
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
SetOpt = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override any setting: --set train.lr=1e-4 (repeatable).")
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

    user = dict(read_yaml(config, "config file").get("sample", {}) if config else {})
    for assignment in sets or []:
        user.update(parse_assignment(assignment).get("sample", {}))
    user.update({k: v for k, v in options.items() if v is not None})
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
