"""Option helpers any command may use: `--set` with an example that fits the command, an
option's default as each preset sets it, and option values checked against the settings they
feed, so an error names the option given.

`cli/common.py` keeps the options every command shares as they are (`ConfigOpt`, `PresetOpt`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Optional

import typer
from pydantic import BaseModel, ValidationError
from typing_extensions import Annotated

from ddpmkit.cli.common import resolve_settings
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


TrainSetOpt = set_option("train.lr=1e-4")
SampleSetOpt = set_option("sample.eta=0.5")


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
