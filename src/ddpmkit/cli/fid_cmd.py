"""`ddpmkit fid`: FID of a checkpoint's samples, an image folder or a prepared cache, against a reference."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import typer
from pydantic import ValidationError
from rich.table import Table
from typing_extensions import Annotated

from ddpmkit.cli.common import ConfigOpt, PresetOpt, SetOpt, console, out, resolve_settings, user_errors
from ddpmkit.errors import DdpmkitError
from ddpmkit.io_utils import write_text_atomic
from ddpmkit.settings import SampleConfig, Settings, format_validation_error, parse_assignment, read_yaml


def _image_source(path: Path, split: str, n: Optional[int]):
    """An image folder or a prepared cache as an ImageSource; None when it is neither."""
    from ddpmkit.fid import cache_source, folder_source, is_image_folder, is_prepared_cache

    if is_prepared_cache(path):
        return cache_source(path, split, n)
    if is_image_folder(path):
        return folder_source(path, n)
    return None


def _stats_of(path: Path, split: str, n: Optional[int], ex, cache_dir: Path, what: str):
    """(stats, description) for a .npz stats file, an image folder or a prepared cache."""
    from ddpmkit.fid import FidStats

    if path.is_file() and path.suffix == ".npz":
        return FidStats.load(path), {"kind": "stats", "path": str(path)}
    if not path.exists():
        raise DdpmkitError(f"{what} not found: {path}")
    source = _image_source(path, split, n)
    if source is None:
        raise DdpmkitError(f"{what} {path} is not an image folder, a prepared cache or a .npz stats file")
    return _source_stats(source, ex, cache_dir)


def _source_stats(source, ex, cache_dir: Path):
    """(stats, description) of an ImageSource, its statistics cached under `cache_dir`."""
    stats, cached, reused = ex.source_stats(source, cache_dir)
    desc = {"kind": source.identity["kind"], "path": source.origin or source.label, "stats_cache": str(cached) if cached else None, "reused": reused}
    if "split" in source.identity:
        desc["split"] = source.identity["split"]
    return stats, desc


def _sample_config(base: SampleConfig, config: Optional[Path], sets: Optional[list[str]], updates: dict[str, Any]) -> SampleConfig:
    """The checkpoint's sampling settings, overridden by --config / --set sample.* / the options."""
    user = dict(read_yaml(config, "config file").get("sample", {}) if config else {})
    for assignment in sets or []:
        user.update(parse_assignment(assignment).get("sample", {}))
    user.update({k: v for k, v in updates.items() if v is not None})
    try:
        return SampleConfig.model_validate({**base.model_dump(), **user})
    except ValidationError as e:
        raise DdpmkitError(format_validation_error(e, "sample options")) from None


def _generated_stats(path: Path, asked: Settings, ex, dev, config, sets, opts: dict[str, Any]):
    """Statistics of n samples from a checkpoint; returns (stats, description, its settings)."""
    from ddpmkit.generate import generate, load_for_sampling
    from ddpmkit.images import to_uint8
    from ddpmkit.samplers import make_sampler
    from ddpmkit.schedule import NoiseSchedule

    model, settings, step = load_for_sampling(path, dev, fallback_settings=asked)
    cfg = _sample_config(settings.sample, config, sets, opts)
    n = asked.fid.n
    images = generate(model, settings, n, seed=cfg.seed, batch_size=cfg.batch_size, device=dev, sample_cfg=cfg)
    stats = ex.stats((to_uint8(x).cpu() for x in images), limit=n)
    steps = len(make_sampler(NoiseSchedule.from_config(settings.diffusion), cfg))  # resolves steps=None
    desc = {"kind": "checkpoint", "path": str(path), "sampler": cfg.sampler, "steps": steps, "eta": cfg.eta,
            "seed": cfg.seed, "checkpoint_step": step}
    return stats, desc, settings


def _table(result: dict[str, Any]) -> Table:
    table = Table(title="FID", show_header=True)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    table.add_row("FID", f"{result['fid']:.4f}")
    for key in ("n", "reference_n", "sampler", "steps", "seed", "checkpoint_step"):
        if result.get(key) is not None:
            table.add_row(key, str(result[key]))
    table.add_row("source", f"{result['source']['kind']}: {result['source']['path']}")
    ref = result["reference"]
    reused = " (cached stats)" if ref.get("reused") else ""
    table.add_row("reference", f"{ref['kind']}: {ref['path']}{reused}")
    table.add_row("time", f"{result['time_s']:.1f} s")
    return table


@user_errors
def fid(
    source: Annotated[Path, typer.Argument(help="Run directory / checkpoint (its samples), image folder, prepared cache or .npz stats.")],
    reference: Annotated[Optional[Path], typer.Argument(help="Image folder, prepared cache or .npz stats (default: the prepared split fid.ref_split or data.split).")] = None,
    n: Annotated[Optional[int], typer.Option("--n", help="Images from SOURCE: samples to generate (fid.n), or the first n of a folder/cache.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Images per batch, for sampling and for Inception.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Sampling seed.")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="ddpm, ddim or dpmsolver++.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Sampler steps (network calls).")] = None,
    out_json: Annotated[Optional[Path], typer.Option("--out", help="Write the result as JSON here.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --out file.")] = False,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    sets: SetOpt = None,
) -> None:
    """Fréchet Inception Distance (pytorch-fid's Inception-v3 pool3 features), offline."""
    from ddpmkit.device import resolve_device
    from ddpmkit.fid import FidExtractor, frechet_distance

    start = time.perf_counter()
    if not source.exists():
        raise DdpmkitError(f"SOURCE not found: {source}")
    if out_json is not None and out_json.exists() and not force:
        raise DdpmkitError(f"{out_json} already exists; pass --force to overwrite it")
    asked = resolve_settings(
        config, preset, sets,
        {"train": {"device": device}, "fid": {"n": n, "batch_size": batch_size}},
    )
    dev = resolve_device(asked.train.device)
    f = asked.fid
    ex = FidExtractor(f.weights, dev, f.batch_size, f.verify_weights)
    stats_dir = Path(asked.data.cache_dir) / "fid"

    ref_settings = asked
    is_stats_or_images = (source.is_file() and source.suffix == ".npz") or (
        source.is_dir() and _image_source(source, asked.data.split, None) is not None
    )
    if is_stats_or_images:
        src_stats, src_desc = _stats_of(source, asked.data.split, n, ex, stats_dir, "SOURCE")
    else:
        opts = {"sampler": sampler, "steps": steps, "seed": seed, "batch_size": batch_size}
        src_stats, src_desc, ref_settings = _generated_stats(source, asked, ex, dev, config, sets, opts)

    split = f.ref_split or ref_settings.data.split
    if reference is None:
        from ddpmkit.fid import default_reference

        # a checkpoint's samples are compared with the data it was trained on (its size and crop)
        ref_source = default_reference(ref_settings.data, split, f.ref_n)
        ref_stats, ref_desc = _source_stats(ref_source, ex, stats_dir)
    else:
        ref_stats, ref_desc = _stats_of(reference, split, f.ref_n, ex, stats_dir, "REFERENCE")

    result: dict[str, Any] = {
        "fid": frechet_distance(src_stats, ref_stats),
        "n": src_stats.count,
        "reference_n": ref_stats.count,
        "sampler": src_desc.get("sampler"),
        "steps": src_desc.get("steps"),
        "seed": src_desc.get("seed"),
        "checkpoint_step": src_desc.get("checkpoint_step"),
        "time_s": time.perf_counter() - start,
        "source": src_desc,
        "reference": ref_desc,
        "weights_sha256": ex.sha256,
    }
    out.print(_table(result))
    if out_json is not None:
        write_text_atomic(out_json, json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {out_json}")
