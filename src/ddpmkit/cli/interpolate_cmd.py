"""`ddpmkit interpolate`: a walk between two faces, as a strip PNG and a GIF.

Two seeds (their x_T as `sample` draws them) or two real images (their x_T found by DDIM
inversion), slerped and decoded with deterministic DDIM. Every option is checked before the
model is loaded or anything is printed or created.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import typer
from typing_extensions import Annotated

from ddpmkit.cli.common import (ConfigOpt, PresetOpt, SetOpt, console, default_is, newest_run, resolve_sample_config,
                                resolve_settings, user_errors)
from ddpmkit.cli.sample_cmd import counted, output_folder, say_which_run
from ddpmkit.errors import DdpmkitError
from ddpmkit.progress import Progress
from ddpmkit.sections import DEFAULT_SAMPLE_BATCH, MAX_SEED

if TYPE_CHECKING:
    from torch import Tensor

    from ddpmkit.settings import Settings

MAX_FRAMES = 1000
MAX_REFINE = 10
PAIRED = ("--seeds", "--images")  # options that take their two values after one flag
_NUMBER = re.compile(r"-?\d+$")


def spread_pairs(args: Sequence[str], names: Sequence[str] = PAIRED) -> list[str]:
    """`--seeds 3 17` as click reads a repeatable option: `--seeds 3 --seeds 17`.

    After one of `names`, every following value is taken (all of them, so that three values are an
    error naming the option, not a stray argument): after --seeds every whole number (a path
    after them is RUN), after --images everything up to the next option (RUN goes before them).
    """
    out: list[str] = []
    k = 0
    while k < len(args):
        arg = args[k]
        k += 1
        values = []
        if "=" in arg and arg.split("=", 1)[0] in names:  # --seeds=3 17
            arg, first = arg.split("=", 1)
            values.append(first)
        out.append(arg)
        if arg not in names:
            continue
        while k < len(args) and (_NUMBER.match(args[k]) if arg == "--seeds" else not args[k].startswith("-")):
            values.append(args[k])
            k += 1
        if values:
            out.append(values[0])
            for v in values[1:]:
                out.extend([arg, v])
    return out


def paired_command(base: type) -> type:
    """`base` (a click command class) whose arguments go through `spread_pairs` first."""

    class PairedCommand(base):  # type: ignore[misc, valid-type]
        def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
            return super().parse_args(ctx, spread_pairs(args))

    return PairedCommand


@user_errors
def interpolate(
    checkpoint: Annotated[Optional[Path], typer.Argument(metavar="RUN", help="Run directory, checkpoint folder or .safetensors. " + default_is("the newest run under runs/"), show_default=False)] = None,  # noqa: E501
    seeds: Annotated[Optional[list[int]], typer.Option("--seeds", metavar="S0 S1", help="Walk between the x_T of these two seeds: the ends are `ddpmkit sample --seed S --sampler ddim --eta 0` at the same --steps.", show_default=False)] = None,  # noqa: E501
    images: Annotated[Optional[list[Path]], typer.Option("--images", metavar="A B", help="Walk between two real images: each cropped and resized as the run's data was, then encoded to its x_T by DDIM inversion.", show_default=False)] = None,  # noqa: E501
    frames: Annotated[int, typer.Option("--frames", help="Pictures along the walk, both ends included (2 or more).")] = 16,
    steps: Annotated[Optional[int], typer.Option("--steps", help="DDIM steps to decode (and to invert). " + default_is("the run's sample.steps if its sampler is ddim, else 50"), show_default=False)] = None,  # noqa: E501
    refine: Annotated[int, typer.Option("--refine", help="With --images: extra network calls per inversion step, each bringing x_t closer to the one that decodes exactly back (0: plain DDIM inversion).")] = 2,  # noqa: E501
    bounce: Annotated[bool, typer.Option("--bounce/--no-bounce", help="The GIF goes there and back (a seamless loop); --no-bounce: forward only, holding the end.")] = True,  # noqa: E501
    scale: Annotated[Optional[int], typer.Option("--scale", help="Enlarge strip.png by this whole factor (nearest). " + default_is("to a readable size"), show_default=False)] = None,  # noqa: E501
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder. " + default_is("outputs/samples/RUN-stepN-interp-ddimSTEPS-seedsA-B (or -images-A-B)"), show_default=False)] = None,  # noqa: E501
    force: Annotated[bool, typer.Option("--force", metavar="", help="Write into --out even if it holds files.")] = False,
    no_ema: Annotated[bool, typer.Option("--no-ema", metavar="", help="Use the raw weights instead of the EMA.")] = False,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:N or mps. " + default_is("auto"), show_default=False)] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", metavar="", show_default=False, help="A bar in a terminal, plain lines when piped (default); --no-progress: neither.")] = True,  # noqa: E501
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    sets: SetOpt = None,
) -> None:
    """Walk from one face to another: strip.png, interpolation.gif and frames/*.png.

    Examples:
      ddpmkit interpolate --seeds 3 17 --frames 16
      ddpmkit interpolate runs/demo --images a.jpg b.jpg --steps 100
    The starting noises are slerped (spherical interpolation) and decoded with DDIM, η = 0.
    """
    # lazy: torch and the model code load when the command runs, not for `ddpmkit --help`
    from ddpmkit.checkpoint import load_model
    from ddpmkit.device import resolve_device

    pair = check_options(seeds, images, frames, refine, scale)
    asked = resolve_settings(config, preset, sets, {"train": {"device": device}})
    dev = resolve_device(asked.train.device)
    path = checkpoint if checkpoint is not None else newest_run(need_checkpoint=True)
    model, settings, step = load_model(path, dev, use_ema=not no_ema, fallback_settings=asked)
    cfg = ddim_config(settings, config, sets, steps)
    ends = "seeds{}-{}".format(*pair) if images is None else "images-{}-{}".format(*(_slug(p) for p in pair))
    label = f"{Path(path).resolve().name}-step{step}-interp-ddim{cfg.steps}-{ends}"
    out_dir = output_folder(out, force, cfg.out_dir / label)
    ends_x = read_ends(pair, images is not None, settings)
    # everything is checked: from here on, output
    say_which_run(checkpoint is None, path, step, "interpolating with")
    how = f"seeds {pair[0]} and {pair[1]}" if images is None else f"{pair[0]} and {pair[1]} (DDIM inversion)"
    console.print(f"interpolating {frames} frames between {how} with ddim ({cfg.steps} steps) on {dev} from step"
                  f" {step:,} into {out_dir}", markup=False, soft_wrap=True)
    t0 = time.perf_counter()
    walk = run_walk(model, settings, cfg, ends_x, images is not None, frames, refine, dev, progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_outputs(out_dir, walk, scale, bounce)
    console.print(f"wrote {frames} frames in {time.perf_counter() - t0:.1f}s to {out_dir} (strip.png, "
                  f"interpolation.gif, frames/{', inputs.png' if images is not None else ''})",
                  markup=False, soft_wrap=True)


def check_options(seeds: Optional[list[int]], images: Optional[list[Path]], frames: int, refine: int,
                  scale: Optional[int]) -> list[Any]:
    """One of --seeds and --images with two values each, the counts in range; images must exist.
    Returns the two seeds or the two image paths."""
    if (seeds is None) == (images is None):
        raise DdpmkitError("give either --seeds S0 S1 or --images A B" + (", not both" if seeds else ""))
    name, pair = ("--seeds", seeds or []) if seeds is not None else ("--images", images or [])
    if len(pair) != 2:
        what = "seeds" if seeds is not None else "images"
        hint = " (RUN goes before them)" if len(pair) > 2 else ""
        raise DdpmkitError(f"{name} needs exactly two {what}, got {len(pair)}: {' '.join(map(str, pair))}{hint}")
    for s in seeds or []:
        if not 0 <= s <= MAX_SEED:
            raise DdpmkitError(f"--seeds {s} is out of range: 0 to {MAX_SEED:,}")
    for p in images or []:
        if not p.exists():
            raise DdpmkitError(f"image not found: {p}")
        if p.is_dir():
            raise DdpmkitError(f"expected an image file, got a directory: {p}")
    if not 2 <= frames <= MAX_FRAMES:
        raise DdpmkitError(f"--frames {frames} is out of range: 2 to {MAX_FRAMES} (both ends included)")
    if not 0 <= refine <= MAX_REFINE:
        raise DdpmkitError(f"--refine {refine} is out of range: 0 to {MAX_REFINE}")
    if scale is not None and not 1 <= scale <= 64:
        raise DdpmkitError(f"--scale {scale} is out of range: a whole factor from 1 to 64")
    return list(pair)


def read_ends(pair: list[Any], from_images: bool, settings: "Settings") -> list[Any]:
    """The two seeds as they are, or the two images read now, cropped and resized as the run's data
    (each (1, 3, S, S) in [-1, 1]): an unreadable image is an error before any output."""
    if not from_images:
        return pair
    from ddpmkit.interpolation import load_face  # lazy, as in interpolate()

    return [load_face(p, settings.data.crop, settings.data.size) for p in pair]


def ddim_config(settings: "Settings", config: Optional[Path], sets: Optional[list[str]], steps: Optional[int]) -> Any:
    """The run's sample settings as deterministic DDIM: --steps, else its steps when its sampler is
    DDIM (another sampler's count, DDPM's 250, says nothing about DDIM's), else DDIM's default."""
    stored = settings.sample
    if stored.sampler != "ddim":
        stored = stored.model_copy(update={"steps": None})
    return resolve_sample_config(stored, settings.diffusion.timesteps, config, sets,
                                 {"sampler": "ddim", "eta": 0.0, "steps": steps})


def _slug(path: Path) -> str:
    """A file's stem, safe in a folder name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem)[:40] or "image"


def run_walk(model: Any, settings: "Settings", cfg: Any, ends: list[Any], from_images: bool, frames: int,
             refine: int, dev: Any, progress: bool) -> dict[str, "Tensor"]:
    """The two x_T (drawn from the two seeds, or inverted from the two (1, 3, S, S) images), the
    slerp path, decoded with progress. Returns {"frames": (F, 3, H, W)} and, from images, "inputs" and "ends" (their reconstructions)."""
    # lazy, as in interpolate(): torch loads when the command runs, not for `ddpmkit --help`
    import torch

    from ddpmkit.generate import eps_fn
    from ddpmkit.interpolation import decode, seed_noise
    from ddpmkit.samplers import make_sampler
    from ddpmkit.samplers.inversion import ddim_invert, invertible_ddim
    from ddpmkit.samplers.slerp import slerp_path
    from ddpmkit.schedule import NoiseSchedule

    sched = NoiseSchedule.from_config(settings.diffusion).to(dev)
    size = settings.data.size
    smp = invertible_ddim(sched, cfg.steps, cfg.spacing) if from_images else make_sampler(sched, cfg)
    n = len(smp.timesteps)
    batch = cfg.batch_size or DEFAULT_SAMPLE_BATCH
    batches = -(-frames // batch)
    total = n * batches + (n * (1 + refine) if from_images else 0)
    result: dict[str, Tensor] = {}
    # as a context manager, piped, the bar ends with a line of the final count
    with Progress("interpolate", total, mode="auto" if progress else "off", console=console) as bar:
        eps = counted(eps_fn(model, dev, prediction=settings.diffusion.prediction, sched=sched), lambda calls: (bar.update(calls), bar.line()))
        if from_images:
            bar.update(0, "inverting the images")
            x0 = torch.cat(ends).to(dev)
            z = ddim_invert(eps, smp, x0, refine=refine)
            result["inputs"] = x0.cpu()
            z0, z1 = z[:1], z[1:]
        else:
            shape = (settings.model.in_channels, size, size)
            z0, z1 = seed_noise(ends[0], shape, dev), seed_noise(ends[1], shape, dev)
        bar.update(bar.done, f"decoding 0/{frames} frames")
        walk = decode(eps, smp, slerp_path(z0, z1, frames), batch,
                      on_batch=lambda done: bar.update(bar.done, f"decoding {done}/{frames} frames"))
        result["frames"] = walk.cpu()
    return result


def write_outputs(out_dir: Path, walk: dict[str, "Tensor"], scale: Optional[int], bounce: bool) -> None:
    """strip.png, interpolation.gif, frames/frame_NNNNN.png; from images, inputs.png (the two
    images as the model saw them) and a line on how closely the ends reconstruct them."""
    # lazy, as in interpolate(): torch loads when the command runs, not for `ddpmkit --help`
    from ddpmkit.images import save_grid, save_images
    from ddpmkit.interpolation import reconstruction_error, save_interpolation_gif, save_strip

    x = walk["frames"]
    save_strip(x, out_dir / "strip.png", scale)
    save_interpolation_gif(x, out_dir / "interpolation.gif", bounce)
    (out_dir / "frames").mkdir(exist_ok=True)
    save_images(x, out_dir / "frames", prefix="frame")
    if "inputs" in walk:
        inputs = walk["inputs"]
        save_grid(inputs, out_dir / "inputs.png", nrow=2, scale=scale)
        for k, (got, want) in enumerate(((x[0], inputs[0]), (x[-1], inputs[1]))):
            mae, psnr = reconstruction_error(got, want)
            console.print(f"image {'AB'[k]} decoded back from its x_T: mean error {mae:.2f}/255 levels, "
                          f"PSNR {psnr:.1f} dB", markup=False)
