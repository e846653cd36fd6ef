"""`ddpmkit inpaint [RUN] IMAGE`: fill a masked part of a face with a trained model (RePaint).

The image is cropped and resized as the run's data was (`data.crops`: the run's crop for CelebA
and folders, the centre square for the demo faces). The math is `samplers.repaint`; the masks are
`masks`. Writes grid.png (input | mask | the fills), fills/*.png, input.png, mask.png and, with
--gif, denoise.gif (the first batch's final descent: x_t beside the predicted x_0).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from typing_extensions import Annotated

from ddpmkit.cli.common import (ConfigOpt, PresetOpt, SetOpt, console, default_is, newest_run, resolve_settings,
                                user_errors)
from ddpmkit.cli.sample_cmd import counted, output_folder, say_which_run
from ddpmkit.errors import DdpmkitError
from ddpmkit.sections import DEFAULT_SAMPLE_BATCH, MAX_SEED

if TYPE_CHECKING:
    from torch import Tensor

    from ddpmkit.settings import Settings

MASK_CHOICES = "box, left, right, top, bottom, eyes, mouth, random"
STEPS, JUMP, RESAMPLE = 250, 10, 10  # RePaint's settings for faces (samplers.repaint.PAPER_*)
GRID_ROW = 10  # pictures a row of grid.png holds
TINT = (1.0, -1.0, 1.0)  # magenta, in [-1, 1]: the region to fill on the mask picture
DEMO = re.compile(r"demo:(\d+)$")  # IMAGE demo:K: demo face K, from a stream no run trains on
DEMO_STREAM = 1  # added to the run's data.synthetic_seed: another stream shares no face with it


@user_errors
def inpaint(
    run: Annotated[Optional[Path], typer.Argument(metavar="RUN", help="Run directory, checkpoint folder or .safetensors. " + default_is("the newest run under runs/"), show_default=False)] = None,  # noqa: E501
    image: Annotated[Optional[Path], typer.Argument(metavar="IMAGE", help="The face to fill in (any format Pillow reads), or demo:K for generated demo face K (not in any training set); required.", show_default=False)] = None,  # noqa: E501
    mask: Annotated[str, typer.Option("--mask", help=f"What to fill: {MASK_CHOICES}, or a PNG (white = fill; the image's size or square).")] = "box",  # noqa: E501
    n: Annotated[int, typer.Option("--n", help="Number of fills.")] = 4,
    steps: Annotated[Optional[int], typer.Option(help=f"Steps of the respaced DDPM chain. {default_is(f'{STEPS}, at most T')}", show_default=False)] = None,  # noqa: E501
    jump: Annotated[int, typer.Option(help="RePaint jump length j: go back up j steps at a time.")] = JUMP,
    resample: Annotated[int, typer.Option(help="RePaint resamplings r at each jump point; --resample 1: the replacement method.")] = RESAMPLE,  # noqa: E501
    seed: Annotated[int, typer.Option(help="Seed: fill i of seed s is the same for any --n or --batch-size; also draws --mask random.")] = 0,  # noqa: E501
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Fills per batch. " + default_is("the run's sample.batch_size"), show_default=False)] = None,  # noqa: E501
    gif: Annotated[bool, typer.Option("--gif", metavar="", help="Also write denoise.gif: the fill forming (the first batch).")] = False,  # noqa: E501
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder. " + default_is("outputs/inpaint/RUN-stepN-IMAGE-MASK-repaintSTEPS-jJ-rR-seedS"), show_default=False)] = None,  # noqa: E501
    force: Annotated[bool, typer.Option("--force", metavar="", help="Write into --out even if it holds files.")] = False,  # noqa: E501
    no_ema: Annotated[bool, typer.Option("--no-ema", metavar="", help="Use the raw weights instead of the EMA.")] = False,  # noqa: E501
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:N or mps. " + default_is("auto"), show_default=False)] = None,  # noqa: E501
    progress: Annotated[bool, typer.Option("--progress/--no-progress", metavar="", show_default=False, help="A bar in a terminal, plain lines when piped (default); --no-progress: neither.")] = True,  # noqa: E501
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    sets: SetOpt = None,
) -> None:
    """Fill in a masked part of a face (RePaint): grid.png, fills/*.png and (--gif) denoise.gif.

    Usage: ddpmkit inpaint [RUN] IMAGE. Known pixels are kept exactly; the rest is drawn by the
    model, resampled back and forth (--jump, --resample) so the fill agrees with its border.

    Examples:
      ddpmkit inpaint face.jpg --mask eyes --gif      (the newest run under runs/)
      ddpmkit inpaint face.jpg --mask random --resample 1 --jump 1   (replacement, no resampling)
      ddpmkit inpaint demo:3 --mask mouth --n 8    (a generated demo face: no file needed)
    The model comes from RUN; --preset, --config and --set describe foreign weights only.
    """
    # lazy: torch and the model code load when the command runs, not for `ddpmkit --help`
    from ddpmkit.masks import MASKS

    run, image, demo, path, model, settings, step, dev = load_inputs(run, image, config, preset, sets, device, no_ema)
    T = settings.diffusion.timesteps
    steps = min(STEPS, T) if steps is None else steps
    check_options(n, steps, jump, resample, seed, batch_size, T)
    pixels, fill = image_and_mask(image, demo, mask, seed, settings)
    sched, repaint = repaint_chain(settings, dev, steps, jump, resample)
    mask_name = mask.lower() if mask.lower() in MASKS else "mask-" + Path(mask).stem
    stem = f"demo{demo.group(1)}" if demo is not None else image.stem
    label = f"{Path(path).resolve().name}-step{step}-{stem}-{mask_name}-repaint{steps}-j{jump}-r{resample}-seed{seed}"
    out_dir = output_folder(out, force, settings.sample.out_dir.parent / "inpaint" / label)
    # everything is checked: from here on, output
    say_which_run(run is None, path, step, "inpainting with")
    console.print(f"inpainting {n} fill(s) of {image} ({settings.data.size} px, "
             f"{float(fill.float().mean()):.0%} masked) with RePaint ({steps} steps, jump {jump}, resample "
             f"{resample}: {len(repaint):,} network calls a batch) on {dev} into {out_dir}",
                  markup=False, soft_wrap=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fills = draw_fills(model, repaint, sched.alphas_cumprod, pixels, fill, n=n, seed=seed,
                       batch_size=batch_size or settings.sample.batch_size or DEFAULT_SAMPLE_BATCH, dev=dev, out_dir=out_dir,
                       gif_frames=settings.sample.gif_frames if gif else 0, progress=progress,
                       prediction=settings.diffusion.prediction)
    write_pictures(out_dir, pixels, fill, fills)
    files = "grid.png, fills/, input.png, mask.png" + (", denoise.gif" if gif else "")
    console.print(f"wrote {n} fill(s) in {time.perf_counter() - t0:.1f}s to {out_dir} ({files})",
                  markup=False, soft_wrap=True)


def repaint_chain(settings: "Settings", dev: Any, steps: int, jump: int, resample: int) -> tuple[Any, Any]:
    """The run's schedule on `dev` and RePaint over its DDPM chain respaced to `steps` (the run's
    spacing, variance and x̂_0 handling)."""
    from ddpmkit.samplers import DDPMSampler
    from ddpmkit.samplers.repaint import RePaint
    from ddpmkit.schedule import NoiseSchedule

    sched = NoiseSchedule.from_config(settings.diffusion).to(dev)
    smp = DDPMSampler(sched, settings.sample.spacing, settings.sample.variance, settings.sample.x0)
    smp.set_timesteps(steps)
    return sched, RePaint(smp, jump, resample)


def load_inputs(run: Optional[Path], image: Optional[Path], config: Any, preset: Any, sets: Any,
                device: Optional[str], no_ema: bool) -> tuple[Any, ...]:
    """RUN and IMAGE sorted out (one positional means IMAGE), the image checked before the model
    loads, then the model: (run, image, demo match, path, model, settings, step, device)."""
    from ddpmkit.checkpoint import load_model
    from ddpmkit.device import resolve_device

    if image is None:
        if run is None:
            raise DdpmkitError("no IMAGE given: ddpmkit inpaint [RUN] IMAGE --mask ...")
        run, image = None, run
    demo = DEMO.match(str(image)) if not image.exists() else None
    if demo is None:
        read_image(image, None)  # not found / unreadable: before loading the model
    asked = resolve_settings(config, preset, sets, {"train": {"device": device}})
    dev = resolve_device(asked.train.device)
    path = run if run is not None else newest_run(need_checkpoint=True)
    model, settings, step = load_model(path, dev, use_ema=not no_ema, fallback_settings=asked)
    return run, image, demo, path, model, settings, step, dev


def check_options(n: int, steps: int, jump: int, resample: int, seed: int, batch_size: Optional[int], T: int) -> None:
    """Refuse out-of-range options before anything is written."""
    if not 1 <= n <= 10_000:
        raise DdpmkitError(f"--n {n} is out of range: 1 to 10,000")
    if not 1 <= steps <= T:
        raise DdpmkitError(f"--steps {steps} is out of range: 1 to the model's T = {T}")
    if jump < 1 or resample < 1:
        raise DdpmkitError(f"--jump {jump} and --resample {resample} must both be at least 1")
    if resample > 1 and jump >= steps:
        raise DdpmkitError(f"--jump {jump} must be less than --steps {steps} to resample (or --resample 1)")
    if not 0 <= seed <= MAX_SEED:
        raise DdpmkitError(f"--seed {seed} is out of range: 0 to {MAX_SEED:,}")
    if batch_size is not None and batch_size < 1:
        raise DdpmkitError(f"--batch-size {batch_size} must be at least 1")


def image_and_mask(image: Path, demo: Optional["re.Match[str]"], mask: str, seed: int,
                   settings: "Settings") -> tuple["Tensor", "Tensor"]:
    """The input as the run's data was made, (3, S, S) uint8, and the mask, (S, S) bool (True = fill)."""
    from ddpmkit.masks import resolve_mask

    size = settings.data.size
    crop, layout = data_crop(settings)
    if demo is not None:
        pixels, image_size = demo_face(int(demo.group(1)), size, settings.data.synthetic_seed), (size, size)
    else:
        pixels, image_size = read_image(image, (crop, size))
    return pixels, resolve_mask(mask, size, layout=layout, seed=seed, image_size=image_size, crop=crop)


def data_crop(settings: "Settings") -> tuple[str, str]:
    """(crop, face layout) of the run's data: the demo faces are drawn square (centre square,
    the demo layout); CelebA and folders use the run's crop (a folder of another aspect falls
    back to the centre square inside `crop_box`, as `prepare` did)."""
    if settings.data.dataset == "synthetic":
        return "full", "demo"
    return settings.data.crop, settings.data.crop


def read_image(path: Path, crop_size: Optional[tuple[str, int]]) -> tuple["Tensor", tuple[int, int]]:
    """The image as (3, S, S) uint8, cropped and resized as `prepare` does (crop_size = (crop, S);
    None: only check that it reads), and its (width, height). One-line errors."""
    import torch
    from PIL import Image, UnidentifiedImageError

    from ddpmkit.data.crops import load_square
    from ddpmkit.images import require_file

    require_file(path)
    try:
        with Image.open(path) as im:
            size = im.size
            if crop_size is None:
                im.load()  # decode now: a truncated file fails before the model loads
                return torch.empty(0, dtype=torch.uint8), size
        return torch.from_numpy(load_square(str(path), *crop_size).copy()), size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        reason = "not a readable image file" if isinstance(e, UnidentifiedImageError) else str(e).splitlines()[0]
        raise DdpmkitError(f"cannot read image {path}: {reason}") from None


def demo_face(index: int, size: int, synthetic_seed: int) -> "Tensor":
    """Demo face `index` at `size` px, (3, S, S) uint8, drawn from the stream after the run's own
    (data.synthetic_seed + 1): a face like the training data that the run never saw."""
    import torch

    from ddpmkit.data.synthetic import draw_face

    return torch.from_numpy(draw_face(size, synthetic_seed + DEMO_STREAM, index).copy()).permute(2, 0, 1)


def draw_fills(model: Any, repaint: Any, alphas_cumprod: "Tensor", pixels: "Tensor", fill: "Tensor", *, n: int,
               seed: int, batch_size: int, dev: Any, out_dir: Path, gif_frames: int, progress: bool,
               prediction: str) -> "Tensor":
    """n fills, batch by batch, each written to fills/ as it comes: (n, 3, S, S) uint8, the known
    pixels pasted from `pixels` after quantisation (exactly the input's)."""
    import torch
    from PIL import Image

    from ddpmkit.generate import eps_fn
    from ddpmkit.images import save_png, to_uint8
    from ddpmkit.pictures import DenoiseRecorder
    from ddpmkit.progress import Progress
    from ddpmkit.samplers import PerImageNoise

    x0 = (pixels.float() / 127.5 - 1.0).unsqueeze(0).to(dev)
    n_batches = -(-n // batch_size)
    bar = Progress("inpaint", n_batches * len(repaint), mode="auto" if progress else "off", console=console,
                   info=f"fills 0/{n}")
    recorder = DenoiseRecorder(repaint.sampler.timesteps.tolist(), alphas_cumprod, gif_frames) if gif_frames else None
    done, outs = 0, []
    eps = counted(eps_fn(model, dev, prediction=prediction, sched=repaint.sampler.sched),
                  lambda calls: bar.update(calls, f"fills {done}/{n}"))
    (out_dir / "fills").mkdir(exist_ok=True)
    while done < n:
        b = min(batch_size, n - done)
        x = repaint.inpaint(eps, x0.expand(b, -1, -1, -1), fill[None, None].to(dev),
                            generator=PerImageNoise(seed, done, b, dev), callback=recorder if done == 0 else None)
        filled = torch.where(fill, to_uint8(x.clamp(-1, 1)), pixels)  # known pixels: the input's, exactly
        for k, img in enumerate(filled):
            pil = Image.fromarray(img.permute(1, 2, 0).contiguous().numpy())
            save_png(pil, out_dir / "fills" / f"fill_{done + k:05d}.png")
        if done == 0 and recorder is not None:
            recorder.save(out_dir / "denoise.gif")
        outs.append(filled)
        done += b
        bar.line(f"fills {done}/{n}", force=True)
    bar.close()
    return torch.cat(outs)


def write_pictures(out_dir: Path, pixels: "Tensor", fill: "Tensor", fills: "Tensor") -> None:
    """grid.png (input | mask on the input | the fills), input.png and mask.png (white = fill)."""
    import torch
    from PIL import Image

    from ddpmkit.images import save_grid, save_png

    x = pixels.float() / 127.5 - 1.0
    tint = torch.tensor(TINT).reshape(3, 1, 1)
    overlay = torch.where(fill, 0.35 * x + 0.65 * tint, x)
    pictures = torch.cat([x[None], overlay[None], fills.float() / 127.5 - 1.0])
    save_grid(pictures, out_dir / "grid.png", nrow=min(GRID_ROW, len(pictures)))
    save_png(Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy()), out_dir / "input.png")
    save_png(Image.fromarray(fill.numpy().astype("uint8") * 255, "L"), out_dir / "mask.png")
