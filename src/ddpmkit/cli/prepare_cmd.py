"""`ddpmkit prepare`: decode, crop and resize CelebA (or an image folder) once into a cache."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.table import Table
from typing_extensions import Annotated

from ddpmkit.cli.common import ConfigOpt, PresetOpt, console, out, user_errors
from ddpmkit.cli.options import preset_default, set_option, settings_with_options

if TYPE_CHECKING:
    from ddpmkit.data.prepare import PrepareResult

SetOpt = set_option("data.dataset=folder")


@user_errors
def prepare(
    size: Annotated[Optional[int], typer.Option("--size", help=f"Prepared image side in pixels, data.size ({preset_default('data.size')}); the model takes its size from it.")] = None,
    crop: Annotated[Optional[str], typer.Option("--crop", help=f"ddim (128 box at top 57, left 25), center140, or full ({preset_default('data.crop')}).")] = None,
    split: Annotated[Optional[str], typer.Option("--split", help=f"train, val, test or all (official partition; {preset_default('data.split')}).")] = None,
    root: Annotated[Optional[Path], typer.Option("--data-root", help="CelebA root or image folder (default data.root, env DDPMKIT_DATA_ROOT).")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Where prepared caches go (default data.cache_dir).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Processes; 0 = all cores.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if a complete cache exists.")] = False,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    set_: SetOpt = None,
) -> None:
    """Find the dataset layout under the data root and build the image cache (reused when current).

    Examples:
      ddpmkit prepare --size 64
      ddpmkit prepare --size 128 --crop center140 --split all
      ddpmkit prepare --data-root my_faces/ --set data.dataset=folder
    Settings come from the preset, then --config, then --set, then these options.
    """
    options = {
        "--size": ("data.size", size), "--crop": ("data.crop", crop), "--split": ("data.split", split),
        "--data-root": ("data.root", root), "--cache-dir": ("data.cache_dir", cache_dir), "--workers": ("data.workers", workers),
    }
    cfg = settings_with_options(config, preset, set_, options).data
    # lazy, and after the checks above: the data code loads for the work, not for `ddpmkit --help`
    from ddpmkit.data.prepare import prepare_dataset

    console.print(
        f"prepare: {'the image folder' if cfg.dataset == 'folder' else 'CelebA'} at {cfg.root}, {cfg.crop} crop "
        f"resized to {cfg.size} px, split {cfg.split}, cache under {cfg.cache_dir}",
        markup=False, highlight=False, soft_wrap=True,
    )
    result = prepare_dataset(cfg, force=force, console=console, show_progress=True)
    _print_result(result)


def _print_result(result: "PrepareResult") -> None:
    """What was found, kept and skipped, and where the cache is: lines, then a table."""
    for note in result.notes:
        console.print(f"note: {note}")
    c = result.counts
    verb = "reused" if result.reused else f"built in {result.seconds:.1f} s"
    out.print(f"layout: {result.layout.kind} ({result.layout.root})", soft_wrap=True)
    line = f"images: {c['ok']} ok, {c['skipped']} skipped (corrupt or not images)"
    if "attributes_missing" in c:
        line += f", {c['attributes_missing']} without attributes"
    out.print(line)
    out.print(f"cache: {result.path} ({verb})", soft_wrap=True)
    table = Table(title="prepared dataset")
    table.add_column("setting")
    table.add_column("value", overflow="fold")
    for k, v in result.index["settings"].items():
        table.add_row(k, str(v))
    table.add_row("images", f"{c['ok']} of {c['candidates']}")
    table.add_row("per split", ", ".join(f"{k} {v}" for k, v in c["per_split"].items() if v))
    table.add_row("skipped", f"{c['skipped']} (listed in report.txt)" if c["skipped"] else "0")
    if "attributes_missing" in c:
        table.add_row(
            "attributes missing",
            f"{c['attributes_missing']} (file declares {c['attributes_declared']}, has {c['attributes_rows']} rows)",
        )
    if not result.reused:
        table.add_row("speed", f"{c['images_per_second']:,.0f} img/s with {c['workers']} processes")
    out.print(table)
