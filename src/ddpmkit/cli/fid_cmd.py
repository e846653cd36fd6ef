"""`ddpmkit fid`: FID of a checkpoint's samples, an image folder or a prepared cache, against a reference.

Long work shows progress on stderr (`ddpmkit.progress`): sampling, then Inception features of the
reference unless its statistics are cached. Fewer than 2,048 images give a warning: the FID of a
small set is biased upwards, so it is comparable only with FIDs of as many images. KID (x10^3,
mean ± std over subsets; `ddpmkit.fid.kid`) is printed beside it: it needs the images' features,
so it is n/a when SOURCE or REFERENCE is a .npz of statistics.
Beside the FID, a colour table (`ddpmkit.fid.colour`): per-channel mean/std and the share of
values at 0 or 255 of SOURCE and REFERENCE, when they are images (not .npz statistics).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import typer
from rich.table import Table
from typing_extensions import Annotated

from ddpmkit.cli.common import ConfigOpt, PresetOpt, console, out, resolve_sample_config, user_errors
from ddpmkit.cli.options import DeviceOpt, n_option, preset_default, set_option, settings_with_options
from ddpmkit.errors import DdpmkitError
from ddpmkit.io_utils import write_text_atomic
from ddpmkit.progress import Progress
from ddpmkit.settings import Settings

if TYPE_CHECKING:
    from ddpmkit.fid import ColourStats, ImageSource

SetOpt = set_option("fid.ref_split=test")
# below the Inception features' dimension the covariance estimate is singular; papers use 50,000
COMPARABLE_N = 2048


def warn_if_few(count: int, what: str) -> None:
    """Warn (stderr) that an FID from fewer than 2,048 images is not a number to compare with papers."""
    if count < COMPARABLE_N:
        console.print(
            f"warning: {what} has {count:,} images, fewer than {COMPARABLE_N:,}: the FID is biased upwards "
            "and not comparable with papers (50,000 images) or with FIDs of other sample sizes",
            markup=False, highlight=False, soft_wrap=True,
        )


def _progress(what: str, total: int) -> Progress:
    """A bar in a terminal, else a plain line every 10 s and one at the end (with the rate)."""
    return Progress(what, total, unit="images", console=console, show_rate=True)


def _with_progress(source: "ImageSource") -> "ImageSource":
    """The same source (same identity, so cached stats still match) whose reading shows progress."""

    def read(batch_size: int) -> Iterator[Any]:
        with _progress(f"Inception features of {source.label}", source.count) as bar:
            for batch in source.read(batch_size):
                yield batch
                bar.advance(len(batch))

    return dataclasses.replace(source, read=read)


def _image_source(path: Path, split: str, n: Optional[int]):
    """An image folder or a prepared cache as an ImageSource; None when it is neither."""
    # lazy, here and below: ddpmkit.fid and the model code load torch, which `ddpmkit --help` must not
    from ddpmkit.fid import cache_source, folder_source, is_image_folder, is_prepared_cache

    if is_prepared_cache(path):
        return cache_source(path, split, n)
    if is_image_folder(path):
        return folder_source(path, n)
    return None


def _stats_of(path: Path, split: str, n: Optional[int], ex, cache_dir: Path, what: str):
    """(stats, description, colour or None) for a .npz stats file, an image folder or a prepared cache."""
    from ddpmkit.fid import FidStats  # lazy: torch

    if path.is_file() and path.suffix == ".npz":
        stats = FidStats.load(path)
        warn_if_few(stats.count, what)
        return stats, {"kind": "stats", "path": str(path)}, None
    if not path.exists():
        raise DdpmkitError(f"{what} not found: {path}")
    source = _image_source(path, split, n)
    if source is None:
        raise DdpmkitError(f"{what} {path} is not an image folder, a prepared cache or a .npz stats file")
    return _source_stats(source, ex, cache_dir, what)


def _source_stats(source, ex, cache_dir: Path, what: str):
    """(stats, description, colour) of an ImageSource, its statistics cached under `cache_dir`."""
    from ddpmkit.fid import source_colour  # lazy: torch

    warn_if_few(source.count, what)
    stats, cached, reused = ex.source_stats(_with_progress(source), cache_dir)
    if reused:
        console.print(f"{what}: reused the Inception statistics cached in {cached}", markup=False, highlight=False, soft_wrap=True)
    desc = {"kind": source.identity["kind"], "path": source.origin or source.label, "stats_cache": str(cached) if cached else None, "reused": reused}
    if "split" in source.identity:
        desc["split"] = source.identity["split"]
    colour, _, _ = source_colour(source, cache_dir)
    return stats, desc, colour


def _generated_stats(path: Path, asked: Settings, ex, dev, config, sets, opts: dict[str, Any], dist):
    """Statistics of n samples from a checkpoint; returns (stats, description, its settings, colour).
    Under torchrun each process samples its share and every process gets the statistics of all."""
    # lazy: torch and the model code load for the work, not for `ddpmkit --help`
    from ddpmkit.fid import ColourAccumulator, gathered_stats
    from ddpmkit.generate import generate, load_run
    from ddpmkit.images import to_uint8
    from ddpmkit.samplers import make_sampler

    run = load_run(path, dev, fallback_settings=asked)
    settings = run.settings
    cfg = resolve_sample_config(settings.sample, settings.diffusion.timesteps, config, sets, opts)
    sampler = make_sampler(run.sched, cfg)
    n, calls = asked.fid.n, len(sampler.timesteps)
    first, count = dist.shard(n)
    warn_if_few(n, "SOURCE")
    fast = run.for_sampling(cfg, log=lambda m: console.print(m, markup=False))
    eps = fast.denoiser.eps()
    what = f"sampling {n:,} images ({cfg.sampler}, {calls} steps, on {dev}) for their Inception features"
    with _progress(what, count) as bar:

        def counted_eps(x, t):  # each network call is 1/calls of a batch's work
            e = eps(x, t)
            bar.advance(x.shape[0] / calls)
            return e

        images = generate(counted_eps, sampler, count, run.shape, seed=cfg.seed,
                          batch_size=fast.batch_size(cfg.batch_size, count), device=dev, first=first)
        colour = ColourAccumulator()
        feats = ex.features(colour.tap((to_uint8(x) for x in images), count))
        stats, colour = gathered_stats(feats, colour, n, dist)
    desc = {"kind": "checkpoint", "path": str(path), "sampler": cfg.sampler, "steps": cfg.steps, "eta": cfg.eta,
            "seed": cfg.seed, "checkpoint_step": run.step, "x0": sampler.x0}
    return stats, desc, settings, colour


def _table(result: dict[str, Any]) -> Table:
    table = Table(title="FID", show_header=True)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    table.add_row("FID", f"{result['fid']:.4f}")
    kid = result.get("kid")
    table.add_row("KID (x10^3)", f"{kid['mean_x1e3']:.2f} ± {kid['std_x1e3']:.2f} ({kid['subsets']} subsets of "
                  f"{kid['subset_size']:,})" if kid else "n/a: a .npz of statistics has no features")
    for key in ("n", "reference_n", "sampler", "steps", "x0", "seed", "checkpoint_step"):
        if result.get(key) is not None:
            table.add_row(key, str(result[key]))
    table.add_row("source", f"{result['source']['kind']}: {result['source']['path']}")
    ref = result["reference"]
    reused = " (cached stats)" if ref.get("reused") else ""
    table.add_row("reference", f"{ref['kind']}: {ref['path']}{reused}")
    table.add_row("time", f"{result['time_s']:.1f} s")
    return table


def _colour_table(samples: Optional["ColourStats"], reference: Optional["ColourStats"]) -> Optional[Table]:
    """Per-channel mean and std (0-255) and the share of values at 0 or 255, SOURCE above REFERENCE."""
    rows = [(name, c) for name, c in (("SOURCE", samples), ("REFERENCE", reference)) if c is not None]
    if not rows:
        return None
    table = Table(title="Colour (0-255; saturated = values at 0 or 255)", show_header=True)
    table.add_column("")
    for head in ("n", "mean R", "mean G", "mean B", "std R", "std G", "std B", "saturated"):
        table.add_column(head, justify="right")
    for name, c in rows:
        values = [f"{v:.1f}" for v in (*c.mean, *c.std)]
        table.add_row(name, f"{c.n:,}", *values, f"{100 * c.saturated_all:.2f}%")
    return table


def _print_tables(result: dict[str, Any], samples: Optional["ColourStats"], reference: Optional["ColourStats"]) -> None:
    out.print(_table(result))
    colours = _colour_table(samples, reference)
    if colours is not None:
        out.print(colours)


@user_errors
def fid(
    source: Annotated[Path, typer.Argument(metavar="SOURCE", help="Run directory / checkpoint (its samples), image folder, prepared cache or .npz stats.")],
    reference: Annotated[Optional[Path], typer.Argument(metavar="[REFERENCE]", help="Image folder, prepared cache or .npz stats (default: the prepared split fid.ref_split or data.split).")] = None,
    n: n_option(f"Images from SOURCE: samples to generate, fid.n ({preset_default('fid.n')}); or the first n of a folder/cache.") = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help=f"Images per batch, for sampling and for Inception, fid.batch_size ({preset_default('fid.batch_size')}).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Sampling seed.")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="ddpm, ddim or dpmsolver++.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Sampler steps (network calls).")] = None,
    out_json: Annotated[Optional[Path], typer.Option("--out-json", metavar="FILE", help="Write the result as JSON to this file.")] = None,
    force: Annotated[bool, typer.Option("--force", metavar="", help="Overwrite an existing --out-json file.")] = False,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    sets: SetOpt = None,
) -> None:
    """Fréchet Inception Distance and KID (pytorch-fid's Inception-v3 pool3 features).

    Examples:
      ddpmkit fid runs/demo --n 2048
      ddpmkit fid my_images/ reference_stats.npz
      ddpmkit fid runs/celeba64 --sampler ddim --steps 50 --set fid.ref_split=test
    Without REFERENCE, a model's samples are compared with the data it was trained on.
    """
    start = time.perf_counter()
    if not source.exists():
        raise DdpmkitError(f"SOURCE not found: {source}")
    if out_json is not None and out_json.exists() and not force:
        raise DdpmkitError(f"--out-json {out_json} already exists; pass --force to overwrite it")
    options = {"--n": ("fid.n", n), "--batch-size": ("fid.batch_size", batch_size), "--device": ("train.device", device)}
    asked = settings_with_options(config, preset, sets, options)
    # lazy, and after the checks above: torch loads for the work, not for --help or a typo
    from ddpmkit.cli.torchrun import processes

    sample_opts = {"sampler": sampler, "steps": steps, "seed": seed, "batch_size": batch_size}
    with processes(asked.train.device) as (dist, dev):
        _fid(source, reference, n, asked, dev, dist, (config, sets, sample_opts), out_json, start)


def _fid(source: Path, reference: Optional[Path], n: Optional[int], asked: Settings, dev: Any, dist: Any,
         sampling: tuple, out_json: Optional[Path], start: float) -> None:
    """`fid` in one process of `dist` (torchrun: each samples its share of a checkpoint's images;
    process 0 does the rest), on device `dev`."""
    from ddpmkit.fid import FidExtractor, frechet_distance, kid_of  # lazy, as in fid()
    from ddpmkit.fid.colour import compare

    f = asked.fid
    ex = FidExtractor(f.weights, dev, f.batch_size, f.verify_weights)
    stats_dir = Path(asked.data.cache_dir) / "fid"
    side = _source_side(source, n, asked, ex, dev, stats_dir, sampling, dist)
    if not dist.is_main:  # its share of the samples is with process 0
        return
    src_stats, src_desc, ref_settings, src_colour = side
    ref_stats, ref_desc, ref_colour = _reference_side(reference, ref_settings, f, ex, stats_dir)
    kid = kid_of(src_stats, ref_stats)  # None when a side is a .npz of statistics
    result: dict[str, Any] = {
        "fid": frechet_distance(src_stats, ref_stats),
        "kid": kid.as_dict() if kid is not None else None,  # x10^3, as printed
        "n": src_stats.count,
        "reference_n": ref_stats.count,
        **{k: src_desc.get(k) for k in ("sampler", "steps", "seed", "checkpoint_step", "x0")},
        "time_s": time.perf_counter() - start,
        "source": src_desc,
        "reference": ref_desc,
        "weights_sha256": ex.sha256,
        "colour": compare(src_colour, ref_colour),
    }
    _print_tables(result, src_colour, ref_colour)
    if out_json is not None:
        write_text_atomic(out_json, json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {out_json}", markup=False, highlight=False, soft_wrap=True)


def _source_side(source: Path, n: Optional[int], asked: Settings, ex, dev, stats_dir: Path, sampling: tuple, dist):
    """(stats, description, settings of the data to compare with, colour or None) for SOURCE: a stats
    file or images as they are, else a checkpoint's samples (then the settings are the checkpoint's).
    Under torchrun only a checkpoint's samples are shared out; other sources are process 0's (None elsewhere)."""
    is_stats_or_images = (source.is_file() and source.suffix == ".npz") or (
        source.is_dir() and _image_source(source, asked.data.split, None) is not None
    )
    if is_stats_or_images:
        if not dist.is_main:
            return None
        stats, desc, colour = _stats_of(source, asked.data.split, n, ex, stats_dir, "SOURCE")
        return stats, desc, asked, colour
    config, sets, sample_opts = sampling
    return _generated_stats(source, asked, ex, dev, config, sets, sample_opts, dist)


def _reference_side(reference: Optional[Path], ref_settings: Settings, f, ex, stats_dir: Path):
    """(stats, description, colour or None) of REFERENCE, by default the prepared split of the data SOURCE was trained on."""
    split = f.ref_split or ref_settings.data.split
    if reference is not None:
        return _stats_of(reference, split, f.ref_n, ex, stats_dir, "REFERENCE")
    from ddpmkit.fid import default_reference  # lazy: torch

    # a checkpoint's samples are compared with the data it was trained on (its size and crop)
    return _source_stats(default_reference(ref_settings.data, split, f.ref_n), ex, stats_dir, "REFERENCE")
