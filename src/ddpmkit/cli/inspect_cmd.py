"""`ddpmkit inspect`: what a run, checkpoint, settings file or prepared dataset holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from typing_extensions import Annotated

from ddpmkit.cli.common import ConfigOpt, PresetOpt, SetOpt, out, resolve_settings, user_errors
from ddpmkit.errors import DdpmkitError
from ddpmkit.settings import Settings


def _settings_table(settings: Settings, title: str) -> Table:
    table = Table(title=title, show_lines=False)
    table.add_column("setting")
    table.add_column("value")
    for section, values in settings.model_dump(mode="json").items():
        if not isinstance(values, dict):
            table.add_row(section, str(values))
            continue
        for k, v in values.items():
            table.add_row(f"{section}.{k}", str(v))
    return table


def _param_count(settings: Settings) -> int:
    import torch

    from ddpmkit.nn import UNet, count_parameters

    settings.check_model()
    with torch.device("meta"):  # no memory, no time: only shapes
        return count_parameters(UNet.from_config(settings.model))


def _inspect_checkpoint(path: Path) -> None:
    from ddpmkit.checkpoint import read_metadata, resolve_checkpoint, settings_of
    from ddpmkit.train.rundir import read_log

    ref = resolve_checkpoint(path)
    meta = read_metadata(ref.weights)
    settings = settings_of(ref.weights)
    table = Table(title=f"checkpoint {ref.path}")
    table.add_column("field")
    table.add_column("value")
    table.add_row("weights", str(ref.weights))
    table.add_row("step", meta.get("step", "?"))
    table.add_row("EMA weights", "yes" if ref.has_ema else "no")
    table.add_row("training state", "yes" if ref.has_state else "no")
    if settings is not None:
        table.add_row("preset", str(settings.preset))
        table.add_row("parameters", f"{_param_count(settings):,}")
        table.add_row("image size", f"{settings.model.image_size}")
        table.add_row("images seen", f"{int(meta.get('step', 0)) * settings.train.batch_size:,}")
    run_root = ref.path.parent.parent if ref.path.parent.name == "checkpoints" else None
    if run_root is not None:
        log = read_log(run_root / "log.jsonl")
        if log:
            table.add_row("last logged loss", f"{log[-1].get('loss')} at step {log[-1].get('step')}")
        steps = sorted(p.name for p in (run_root / "checkpoints").glob("step_*") if p.is_dir())
        table.add_row("checkpoints", ", ".join(steps))
    out.print(table)
    if settings is not None:
        out.print(_settings_table(settings, "settings stored in the checkpoint"))


@user_errors
def inspect(
    path: Annotated[Optional[Path], typer.Argument(help="Run directory, checkpoint, .safetensors, settings YAML or prepared dataset cache. Omitted: the resolved settings.")] = None,
    preview: Annotated[Optional[Path], typer.Option(help="For a dataset cache: write a preview grid PNG here.")] = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    sets: SetOpt = None,
) -> None:
    """Show what PATH holds: step, settings, parameter count, EMA; or dataset counts."""
    if path is None:
        settings = resolve_settings(config, preset, sets)
        out.print(_settings_table(settings, f"settings (preset {settings.preset})"))
        out.print(f"parameters: {_param_count(settings):,}")
        return
    if not path.exists():
        raise DdpmkitError(f"nothing to inspect at {path}: no such file or directory")
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        settings = resolve_settings(path, preset, sets)
        out.print(_settings_table(settings, f"settings from {path}"))
        out.print(f"parameters: {_param_count(settings):,}")
        return
    if path.is_dir() and (path / "index.json").exists():
        from ddpmkit.data.cache import describe_cache, preview_grid

        table, info = describe_cache(path)
        out.print(table)
        target = preview or path / "preview.png"
        if preview is not None or not target.exists():
            preview_grid(path, target)
        out.print(f"preview grid: {target}")
        return
    if path.is_file() and path.suffix == ".jsonl":
        from ddpmkit.train.rundir import read_log

        rows = read_log(path)
        out.print(json.dumps(rows[-5:], indent=1))
        return
    _inspect_checkpoint(path)
