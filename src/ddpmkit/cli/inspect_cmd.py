"""`ddpmkit inspect`: what a run, checkpoint, settings file or prepared dataset holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table
from typing_extensions import Annotated

from ddpmkit.cli.common import ConfigOpt, PresetOpt, out, resolve_settings, user_errors
from ddpmkit.cli.options import set_option
from ddpmkit.errors import DdpmkitError
from ddpmkit.human import fmt_bytes
from ddpmkit.runfolder import RunFolder, read_jsonl
from ddpmkit.settings import Settings

PREVIEW_DIR = Path("outputs/previews")  # dataset previews: inspect never writes into a cache
SetOpt = set_option("model.ch=64")


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
    # lazy (here and below): torch and the model code load for the inspection, not for --help
    import torch

    from ddpmkit.nn import UNet, count_parameters

    settings.check_model()
    with torch.device("meta"):  # no memory, no time: only shapes
        return count_parameters(UNet.from_config(settings.model))


def _inspect_checkpoint(path: Path) -> None:
    # lazy: torch (see _param_count)
    from ddpmkit.checkpoint import read_metadata, resolve_checkpoint, settings_of

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
    run = RunFolder.of_checkpoint(ref.path)
    if run is not None:
        origin = _imported_from(run)
        if origin:
            table.add_row("imported from", origin)
        losses = [r for r in run.read_log() if "loss" in r]
        if losses:
            table.add_row("last logged loss", f"{losses[-1].get('loss')} at step {losses[-1].get('step')}")
        table.add_row("checkpoints", ", ".join(p.name for p in run.checkpoint_folders()))
    out.print(table)
    if settings is not None:
        out.print(_settings_table(settings, "settings stored in the checkpoint"))


def _imported_from(run: RunFolder) -> Optional[str]:
    """Where `ddpmkit import` took the run's network from (its run info's imported_from), if it did."""
    origin = run.read_info().get("imported_from")
    if not isinstance(origin, dict):
        return None
    revision = origin.get("revision")
    return f"{origin.get('source', '?')}" + (f" at {str(revision)[:12]}" if revision else "")


def _cache_table(info: dict[str, Any]) -> Table:
    """`data.cache.describe_cache`'s facts as a table."""
    table = Table(title=f"cache {Path(info['path']).name}", show_header=True)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    table.add_row("images", f"{info['images']}  shape {tuple(info['shape'] or ())} uint8")
    table.add_row("per split", ", ".join(f"{k} {v}" for k, v in info["per_split"].items() if v))
    for k, v in info["settings"].items():
        table.add_row(k, str(v))
    table.add_row("layout", f"{info['layout']} at {info['root']}")
    table.add_row("skipped files", str(info["skipped"]))
    if info["has_attributes"]:
        table.add_row("attributes missing", str(info["attributes_missing"]))
    table.add_row("size on disk", fmt_bytes(info["bytes"]))
    table.add_row("created", str(info["created"]))
    return table


def _inspect_cache(path: Path, preview: Optional[Path]) -> None:
    """A prepared dataset: its table, and a preview grid written outside the cache (never into it)."""
    # lazy: numpy, torch and PIL, for this path only
    from ddpmkit.data.cache import describe_cache, open_images
    from ddpmkit.images import preview_grid

    info = describe_cache(path)
    out.print(_cache_table(info))
    target = preview or PREVIEW_DIR / f"{path.name}.png"
    if preview is not None or not target.exists():
        preview_grid(open_images(path), target)
    out.print(f"preview grid: {target}")


@user_errors
def inspect(
    path: Annotated[Optional[Path], typer.Argument(metavar="[PATH]", help="Run directory, checkpoint, .safetensors, settings YAML or prepared dataset cache. Omitted: the resolved settings.")] = None,
    preview: Annotated[Optional[Path], typer.Option("--preview-png", metavar="FILE", help=f"For a dataset cache: write the preview grid PNG to this file (default {PREVIEW_DIR}/CACHE.png).")] = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    sets: SetOpt = None,
) -> None:
    """Show what PATH holds: step, settings, parameter count, EMA; or dataset counts.

    Examples:
      ddpmkit inspect runs/demo
      ddpmkit inspect data/cache/celeba-official-64-ddim-train-3f2a9c1b04de
      ddpmkit inspect --preset celeba64 --set model.ch=64
    Without PATH: the settings a command would use, and the model's parameter count.
    """
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
        _inspect_cache(path, preview)
        return
    if path.is_file() and path.suffix == ".jsonl":
        rows = read_jsonl(path)
        out.print(json.dumps(rows[-5:], indent=1))
        return
    _inspect_checkpoint(path)
