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

from ddpmkit.cli.common import (ConfigOpt, PresetOpt, console, counted, default_is, open_run, output_folder,
                                resolve_sample_config, resolve_settings, say_which_run, user_errors)
from ddpmkit.cli.options import DeviceOpt, ForceOpt, NoEmaOpt, ProgressOpt, RunArg, out_option, set_option
from ddpmkit.errors import DdpmkitError
from ddpmkit.progress import Progress
from ddpmkit.settings import MAX_SEED

if TYPE_CHECKING:
    from ddpmkit.generate import OpenRun
    from ddpmkit.interpolation import Walk
    from ddpmkit.settings import Settings

MAX_FRAMES = 1000
MAX_REFINE = 10
PAIRED = ("--seeds", "--images")  # options that take their two values after one flag
_NUMBER = re.compile(r"-?\d+$")
SetOpt = set_option("sample.spacing=trailing")


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
    run: RunArg = None,
    seeds: Annotated[Optional[list[int]], typer.Option("--seeds", metavar="S0 S1", help="Walk between the x_T of these two seeds: the ends are `ddpmkit sample --seed S --sampler ddim --eta 0` at the same --steps.", show_default=False)] = None,  # noqa: E501
    images: Annotated[Optional[list[Path]], typer.Option("--images", metavar="A B", help="Walk between two real images: each cropped and resized as the run's data was, then encoded to its x_T by DDIM inversion.", show_default=False)] = None,  # noqa: E501
    frames: Annotated[int, typer.Option("--frames", help="Pictures along the walk, both ends included (2 or more).")] = 16,
    steps: Annotated[Optional[int], typer.Option("--steps", help="DDIM steps to decode (and to invert). " + default_is("the run's sample.steps if its sampler is ddim, else 50"), show_default=False)] = None,  # noqa: E501
    refine: Annotated[int, typer.Option("--refine", help="With --images: extra network calls per inversion step, each bringing x_t closer to the one that decodes exactly back (0: plain DDIM inversion).")] = 2,  # noqa: E501
    bounce: Annotated[bool, typer.Option("--bounce/--no-bounce", help="The GIF goes there and back (a seamless loop); --no-bounce: forward only, holding the end.")] = True,  # noqa: E501
    scale: Annotated[Optional[int], typer.Option("--scale", help="Enlarge strip.png by this whole factor (nearest). " + default_is("to a readable size"), show_default=False)] = None,  # noqa: E501
    out: out_option("outputs/samples/RUN-stepN-interp-ddimSTEPS-seedsA-B (or -images-A-B)") = None,
    force: ForceOpt = False,
    no_ema: NoEmaOpt = False,
    device: DeviceOpt = None,
    progress: ProgressOpt = True,
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
    pair = check_options(seeds, images, frames, refine, scale)
    opened, newest = open_run(run, resolve_settings(config, preset, sets, {"train": {"device": device}}), no_ema)
    cfg = ddim_config(opened.settings, config, sets, steps)
    ends = "seeds{}-{}".format(*pair) if images is None else "images-{}-{}".format(*(_slug(p) for p in pair))
    out_dir = output_folder(out, force, cfg.out_dir / f"{opened.label}-interp-ddim{cfg.steps}-{ends}")
    ends_x = read_ends(pair, images is not None, opened.settings)
    # everything is checked: from here on, output
    say_which_run(opened, newest, "interpolating with")
    how = f"seeds {pair[0]} and {pair[1]}" if images is None else f"{pair[0]} and {pair[1]} (DDIM inversion)"
    console.print(f"interpolating {frames} frames between {how} with ddim ({cfg.steps} steps) on "
                  f"{opened.denoiser.device} from step {opened.step:,} into {out_dir}", markup=False, soft_wrap=True)
    t0 = time.perf_counter()
    walk = run_walk(opened, cfg, ends_x, frames, refine, progress)
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
    from ddpmkit.faces import face_x0  # lazy: torch loads when the command runs

    return [face_x0(p, settings) for p in pair]


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


def run_walk(run: "OpenRun", cfg: Any, ends: list[Any], frames: int, refine: int, progress: bool) -> "Walk":
    """`interpolation.walk` with a bar over its network calls."""
    from ddpmkit.interpolation import walk, walk_calls, walk_sampler  # lazy, as in interpolate()

    from_images = not isinstance(ends[0], int)
    smp = walk_sampler(run, cfg, from_images)
    batch = run.batch_size(cfg.batch_size, frames)
    total = walk_calls(smp, frames, batch, from_images, refine)
    # as a context manager, piped, the bar ends with a line of the final count
    with Progress("interpolate", total, mode="auto" if progress else "off", console=console,
                  info="inverting the images" if from_images else f"decoding 0/{frames} frames") as bar:
        return walk(run, smp, ends, frames, batch, refine=refine,
                    eps_wrap=lambda eps: counted(eps, lambda calls: (bar.update(calls), bar.line())),
                    on_batch=lambda done: bar.update(bar.done, f"decoding {done}/{frames} frames"))


def write_outputs(out_dir: Path, result: "Walk", scale: Optional[int], bounce: bool) -> None:
    """`interpolation.write_walk`, and a line on how closely the ends reconstruct two input images."""
    from ddpmkit.interpolation import write_walk  # lazy, as in interpolate()

    for k, (mae, psnr) in enumerate(write_walk(out_dir, result, scale, bounce)):
        console.print(f"image {'AB'[k]} decoded back from its x_T: mean error {mae:.2f}/255 levels, "
                      f"PSNR {psnr:.1f} dB", markup=False)
