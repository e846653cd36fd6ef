"""Options and error handling shared by every subcommand."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import typer
from rich.console import Console
from typing_extensions import Annotated

from ddpmkit.errors import DdpmkitError
from ddpmkit.settings import Settings, available_presets, build_settings

console = Console(stderr=True, highlight=False)
out = Console(highlight=False)

ConfigOpt = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="YAML settings file (overrides the preset).")
]
PresetOpt = Annotated[
    Optional[str], typer.Option("--preset", help=f"Starting settings: {', '.join(available_presets())} (default demo).")
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


def is_tty() -> bool:
    return sys.stderr.isatty()
