"""The whole settings object and how it is built: presets, YAML files, `--set` assignments.

Precedence, lowest first: the sections' defaults (`sections.py`) < the preset (`--preset`,
default `demo`) < the YAML file (`--config`) < `--set key=value` < the dedicated options
(`--epochs 50`). Every section forbids unknown keys, so a typo is an error that names the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import Field, ValidationError, model_validator

from ddpmkit.errors import DdpmkitError
from ddpmkit.io_utils import read_text_lines
from ddpmkit.settings.sections import (
    DataConfig,
    DiffusionConfig,
    FidConfig,
    ModelConfig,
    SampleConfig,
    TrainConfig,
    _Section,
)

PRESET_DIR = Path(__file__).parent.parent / "presets"
DEFAULT_PRESET = "demo"
# The machine each preset is sized for (the rule of docs/settings.md's preset table): a CPU preset trains
# in minutes to hours on a laptop; a GPU preset is a paper's model, days on a CPU.
PRESET_MACHINE = {"demo": "cpu", "celeba32": "cpu", "celeba64": "gpu", "celeba128": "gpu"}


class Settings(_Section):
    preset: Optional[str] = None
    model: ModelConfig = Field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    fid: FidConfig = Field(default_factory=FidConfig)

    @model_validator(mode="after")
    def _resolve_image_size(self) -> "Settings":
        """The model's image size is the data's: data.size is the one place to set it."""
        if self.model.image_size is None:
            self.model.image_size = self.data.size
        elif self.model.image_size != self.data.size:
            raise ValueError(
                f"model.image_size ({self.model.image_size}) differs from data.size ({self.data.size}); "
                "set only data.size (--size): the model takes its size from the data"
            )
        return self

    def check_model(self) -> None:
        """Raise DdpmkitError (one line) unless the model fits the data's image size and can be trained.

        Checked where a model is built (train, inspect), not on load: `prepare --size 64` with a
        32 px preset needs no model."""
        try:
            self.model.check_size(self.data.size)
        except ValueError as e:
            raise DdpmkitError(f"bad setting {e} (preset {self.preset!r})") from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------- loading and merging


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


@dataclass(frozen=True)
class PresetInfo:
    """What a preset is for: its data, image size and machine (cpu or gpu)."""

    name: str
    dataset: str
    size: int
    machine: str


def preset_info(name: str) -> PresetInfo:
    data = preset_dict(name).get("data", {}) or {}
    defaults = DataConfig.model_fields
    return PresetInfo(
        name,
        str(data.get("dataset", defaults["dataset"].default)),
        int(data.get("size", defaults["size"].default)),
        PRESET_MACHINE.get(name, "gpu"),
    )


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    if not path.exists():
        raise DdpmkitError(f"{what} not found: {path}")
    if path.is_dir():
        raise DdpmkitError(f"{what} is a directory, not a YAML file: {path}")
    try:
        data = yaml.safe_load("\n".join(read_text_lines(path, what)))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise DdpmkitError(f"{what} {path} is not valid YAML{where}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DdpmkitError(f"{what} {path} must hold a mapping of sections, not {type(data).__name__}")
    return data


def preset_dict(name: str) -> dict[str, Any]:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise DdpmkitError(f"--preset takes a preset name ({', '.join(available_presets())}), not {name!r}; "
                           "give a settings file with --config")
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        raise DdpmkitError(f"unknown preset '{name}'; choose one of: {', '.join(available_presets())}")
    return read_yaml(path, "preset")


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_assignment(text: str) -> dict[str, Any]:
    """`train.lr=1e-4` -> {"train": {"lr": 1e-4}}; the value is parsed as YAML."""
    if "=" not in text:
        raise DdpmkitError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if len(parts) != 2:
        raise DdpmkitError(f"--set key must be section.name (e.g. train.lr), got '{key}'")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return {parts[0]: {parts[1]: value}}


def format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not isinstance(p, int)) or "settings"
    msg = first["msg"]
    if first["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in first and first["type"] != "missing" and not isinstance(first["input"], dict):
        msg = f"{msg} (got {first['input']!r})"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"bad setting {loc} in {source}: {msg}{more}"


def build_settings(
    preset: str | None = None,
    config: Path | None = None,
    overrides: dict[str, Any] | None = None,
    sets: list[str] | None = None,
    preset_patch: dict[str, Any] | None = None,
) -> Settings:
    """Resolve the settings. Raises DdpmkitError with a one-line message on any bad input.

    `preset_patch` changes the preset itself (below --config and --set): e.g. the preset fitted to
    another image size by `ddpmkit train --size`."""
    file_dict = read_yaml(Path(config), "config file") if config is not None else {}
    preset = preset_name(preset, config, file_dict)
    merged = deep_merge(preset_dict(preset), preset_patch or {})
    sources = [f"preset '{preset}'"]
    if config is not None:
        merged = deep_merge(merged, file_dict)
        sources.append(str(config))
    for s in sets or []:
        merged = deep_merge(merged, parse_assignment(s))
    if sets:
        sources.append("--set")
    merged = deep_merge(merged, _drop_none(overrides or {}))
    merged["preset"] = preset
    try:
        return Settings.model_validate(merged)
    except ValidationError as e:
        raise DdpmkitError(format_validation_error(e, " + ".join(sources))) from None


def preset_name(preset: str | None, config: Path | None, file_dict: dict[str, Any] | None = None) -> str:
    """The preset in effect: --preset, else the config file's `preset:`, else the default."""
    if preset:
        return str(preset)
    if file_dict is None:
        file_dict = read_yaml(Path(config), "config file") if config is not None else {}
    return str(file_dict.get("preset") or DEFAULT_PRESET)


def settings_from_dict(data: dict[str, Any], source: str) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        raise DdpmkitError(format_validation_error(e, source)) from None


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _drop_none(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out
