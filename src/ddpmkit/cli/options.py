"""The options commands share, declared once, and option helpers: `--set` with an example that
fits the command, an option's default as each preset sets it, and option values checked against
the settings they feed, so an error names the option given.

The CLI convention (CONTRIBUTING.md; tests/test_cli_convention.py checks every command):
- one option name per setting, the same in every command (`SETTING_OPTIONS`);
- `--out` is an output folder everywhere; an option naming a file says so (`--out-json`, `--preview-png`);
- `-n` beside `--n`; RUN first where a command reads a run; usage lines as written in each docstring;
- each command's `--set` example is a key that command reads.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Optional

import typer
from pydantic import BaseModel, ValidationError
from typing_extensions import Annotated

from ddpmkit.cli.common import default_is, resolve_settings
from ddpmkit.errors import DdpmkitError
from ddpmkit.settings import Settings, available_presets, build_settings


def set_option(example: str) -> Any:
    """The `--set KEY=VALUE` option (repeatable), its help showing `--set {example}`.

    Each command shows a setting it reads: `sample.eta=0.5` under sample, not `train.lr`.
    """
    return Annotated[
        Optional[list[str]],
        typer.Option("--set", metavar="KEY=VALUE", help=f"Override any setting, e.g. --set {example} (repeatable)."),
    ]


# option -> the setting it sets, for every command that takes it; `{own}`: the command's own
# section (train.seed under train, sample.seed under sample, fid.n under fid)
SETTING_OPTIONS = {
    "--data-root": "data.root", "--dataset": "data.dataset", "--size": "data.size", "--crop": "data.crop",
    "--split": "data.split", "--cache-dir": "data.cache_dir", "--workers": "data.workers",
    "--epochs": "train.epochs", "--max-steps": "train.max_steps", "--lr": "train.lr", "--run-dir": "train.run_dir",
    "--device": "train.device", "--compile": "train.compile", "--condition": "train.condition",
    "--time": "train.time_budget", "--precision": "train.precision",
    "--n": "{own}.n", "--seed": "{own}.seed", "--batch-size": "{own}.batch_size", "--sampler": "sample.sampler",
    "--steps": "sample.steps", "--eta": "sample.eta",
}

RunArg = Annotated[Optional[Path], typer.Argument(
    metavar="[RUN]", show_default=False,
    help="Run directory, checkpoint folder or .safetensors. " + default_is("the newest run under runs/"))]
ForceOpt = Annotated[bool, typer.Option("--force", metavar="", help="Write into --out even if it holds files.")]
NoEmaOpt = Annotated[bool, typer.Option("--no-ema", metavar="", help="Use the raw weights instead of the EMA.")]
DeviceOpt = Annotated[Optional[str], typer.Option(
    "--device", show_default=False, help="auto, cpu, cuda, cuda:N or mps. " + default_is("auto"))]
ProgressOpt = Annotated[bool, typer.Option(
    "--progress/--no-progress", metavar="", show_default=False,
    help="A bar in a terminal, plain lines when piped (default); --no-progress: neither.")]


def n_option(help_text: str, required_type: Any = Optional[int]) -> Any:
    """`--n` / `-n`: how many images a command makes."""
    return Annotated[required_type, typer.Option("--n", "-n", help=help_text)]


def out_option(default: str) -> Any:
    """`--out`: the output folder, with the folder a command picks when it is not given."""
    return Annotated[Optional[Path], typer.Option("--out", show_default=False,
                                                  help="Output folder. " + default_is(default))]


@functools.lru_cache(maxsize=None)
def _preset(name: str) -> Settings:
    return build_settings(preset=name)


def preset_default(key: str) -> str:
    """Help text for an option's default: `default 50` when every preset agrees, else
    `default by preset: celeba128 128, celeba64 64, demo 32`. key: "data.size"."""
    section, field = key.split(".", 1)
    values = {name: getattr(getattr(_preset(name), section), field) for name in available_presets()}
    shown = {name: f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v) for name, v in values.items()}
    if len(set(shown.values())) == 1:
        return f"default {next(iter(shown.values()))}"
    return "default by preset: " + ", ".join(f"{name} {v}" for name, v in shown.items())


def _reason(err: ValidationError) -> str:
    first = err.errors()[0]
    return first["msg"].removeprefix("Value error, ")


def check_options(base: Settings, options: dict[str, tuple[str, Any]]) -> None:
    """Validate each given option against the field it sets, one at a time, on top of `base`.

    options: {"--size": ("data.size", 0), ...}; None values (not given) are skipped. Raises
    DdpmkitError naming the option, e.g. `--size 0: Input should be greater than or equal to 8`,
    where validating all settings at once would blame `data.size` and the preset.
    """
    for flag, (key, value) in options.items():
        if value is None:
            continue
        section_name, field = key.split(".", 1)
        section: BaseModel = getattr(base, section_name)
        try:
            type(section).model_validate({**section.model_dump(), field: value})
        except ValidationError as e:
            raise DdpmkitError(f"{flag} {value}: {_reason(e)}") from None


def settings_with_options(
    config: Optional[Path],
    preset: Optional[str],
    sets: Optional[list[str]],
    options: dict[str, tuple[str, Any]],
) -> Settings:
    """The settings (preset < --config < --set < options), each option checked on its own first
    (see `check_options`) so that a bad value is reported under the option's name."""
    base = resolve_settings(config, preset, sets)
    check_options(base, options)
    overrides: dict[str, dict[str, Any]] = {}
    for key, value in options.values():
        section, field = key.split(".", 1)
        overrides.setdefault(section, {})[field] = value
    return resolve_settings(config, preset, sets, overrides)
