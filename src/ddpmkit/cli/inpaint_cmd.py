"""`ddpmkit inpaint [RUN] IMAGE`: fill a masked part of a face with a trained model (RePaint).

The command wires options to `ddpmkit.inpainting` (the face and mask as the run's data was made,
RePaint over the run's chain, the pictures). Writes grid.png (input | mask | the fills),
fills/*.png, input.png, mask.png and, with --gif, denoise.gif (the first batch's final descent:
x_t beside the predicted x_0).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from typing_extensions import Annotated

from ddpmkit.cli.common import (ConfigOpt, PresetOpt, console, counted, default_is, open_run, output_folder,
                                resolve_settings, say_which_run, user_errors)
from ddpmkit.cli.options import DeviceOpt, ForceOpt, NoEmaOpt, ProgressOpt, RunArg, n_option, out_option, set_option
from ddpmkit.errors import DdpmkitError
from ddpmkit.progress import Progress
from ddpmkit.settings import MASK_NAMES, REPAINT_JUMP, REPAINT_RESAMPLE, REPAINT_STEPS

if TYPE_CHECKING:
    from torch import Tensor

    from ddpmkit.generate import OpenRun
    from ddpmkit.inpainting import Face

MASK_CHOICES = ", ".join(MASK_NAMES)
STEPS, JUMP, RESAMPLE = REPAINT_STEPS, REPAINT_JUMP, REPAINT_RESAMPLE
SetOpt = set_option("sample.variance=fixed_large")


@user_errors
def inpaint(
    run: RunArg = None,
    image: Annotated[Optional[Path], typer.Argument(metavar="IMAGE", help="The face to fill in (any format Pillow reads), or demo:K for generated demo face K (not in any training set); required.", show_default=False)] = None,  # noqa: E501
    mask: Annotated[str, typer.Option("--mask", help=f"What to fill: {MASK_CHOICES}, or a PNG (white = fill; the image's size or square).")] = "box",  # noqa: E501
    n: n_option("Number of fills.", int) = 4,
    steps: Annotated[Optional[int], typer.Option(help=f"Steps of the respaced DDPM chain. {default_is(f'{STEPS}, at most T')}", show_default=False)] = None,  # noqa: E501
    jump: Annotated[int, typer.Option(help="RePaint jump length j: go back up j steps at a time.")] = JUMP,
    resample: Annotated[int, typer.Option(help="RePaint resamplings r at each jump point; --resample 1: the replacement method.")] = RESAMPLE,  # noqa: E501
    seed: Annotated[int, typer.Option(help="Seed: fill i of seed s is the same for any --n or --batch-size; also draws --mask random.")] = 0,  # noqa: E501
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Fills per batch. " + default_is("the run's sample.batch_size"), show_default=False)] = None,  # noqa: E501
    gif: Annotated[bool, typer.Option("--gif", metavar="", help="Also write denoise.gif: the fill forming (the first batch).")] = False,  # noqa: E501
    out: out_option("outputs/inpaint/RUN-stepN-IMAGE-MASK-repaintSTEPS-jJ-rR-seedS") = None,
    force: ForceOpt = False,
    no_ema: NoEmaOpt = False,
    device: DeviceOpt = None,
    progress: ProgressOpt = True,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    sets: SetOpt = None,
) -> None:
    """Fill in a masked part of a face (RePaint): grid.png, fills/*.png and (--gif) denoise.gif.

    Known pixels are kept exactly; the rest is drawn by the model, resampled back and forth
    (--jump, --resample) so the fill agrees with its border.

    Examples:
      ddpmkit inpaint face.jpg --mask eyes --gif      (the newest run under runs/)
      ddpmkit inpaint face.jpg --mask random --resample 1 --jump 1   (replacement, no resampling)
      ddpmkit inpaint demo:3 --mask mouth --n 8    (a generated demo face: no file needed)
    The model comes from RUN; --preset, --config and --set describe foreign weights only.
    """
    # lazy: torch and the model code load when the command runs, not for `ddpmkit --help`
    from ddpmkit import inpainting as ip
    from ddpmkit.faces import demo_index
    from ddpmkit.images import check_image

    run, image = run_and_image(run, image)
    if demo_index(image) is None:
        check_image(image)  # not found / unreadable: before loading the model
    opened, newest = open_run(run, resolve_settings(config, preset, sets, {"train": {"device": device}}), no_ema)
    T = opened.settings.diffusion.timesteps
    steps = min(STEPS, T) if steps is None else steps
    ip.check_options(n, steps, jump, resample, seed, batch_size, T)
    face = ip.face_and_mask(image, mask, seed, opened.settings)
    repaint = ip.repaint_chain(opened, steps, jump, resample)
    label = f"{opened.label}-{face.name}-{face.mask_name}-repaint{steps}-j{jump}-r{resample}-seed{seed}"
    out_dir = output_folder(out, force, opened.settings.sample.out_dir.parent / "inpaint" / label)
    # everything is checked: from here on, output
    say_which_run(opened, newest, "inpainting with")
    say_plan(opened, face, image, n, repaint, out_dir, f"{steps} steps, jump {jump}, resample {resample}")
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    filled = draw_fills(opened, repaint, face, n=n, seed=seed, batch_size=opened.batch_size(batch_size or opened.settings.sample.batch_size, n),
                        out_dir=out_dir, gif=gif, progress=progress)
    ip.write_pictures(out_dir, face, filled)
    files = "grid.png, fills/, input.png, mask.png" + (", denoise.gif" if gif else "")
    console.print(f"wrote {n} fill(s) in {time.perf_counter() - t0:.1f}s to {out_dir} ({files})",
                  markup=False, soft_wrap=True)


def say_plan(run: "OpenRun", face: "Face", image: Path, n: int, repaint: Any, out_dir: Path, chain: str) -> None:
    """The plan line: what is filled, how much of it, by which chain, where."""
    console.print(f"inpainting {n} fill(s) of {image} ({run.settings.data.size} px, "
                  f"{float(face.fill.float().mean()):.0%} masked) with RePaint ({chain}: {len(repaint):,} network "
                  f"calls a batch) on {run.denoiser.device} into {out_dir}", markup=False, soft_wrap=True)


def run_and_image(run: Optional[Path], image: Optional[Path]) -> tuple[Optional[Path], Path]:
    """[RUN] IMAGE: one positional is IMAGE (RUN is then the newest run)."""
    if image is None:
        if run is None:
            raise DdpmkitError("no IMAGE given: ddpmkit inpaint [RUN] IMAGE --mask ...")
        return None, run
    return run, image


def draw_fills(run: "OpenRun", repaint: Any, face: "Face", *, n: int, seed: int, batch_size: int, out_dir: Path,
               gif: bool, progress: bool) -> "Tensor":
    """n fills, batch by batch, each written to fills/ as it comes, with progress: (n, 3, S, S) uint8."""
    import torch  # lazy, as in inpaint()

    from ddpmkit.inpainting import fills, save_fills
    from ddpmkit.pictures import DenoiseRecorder

    n_batches = -(-n // batch_size)
    bar = Progress("inpaint", n_batches * len(repaint), mode="auto" if progress else "off", console=console,
                   info=f"fills 0/{n}")
    recorder = (DenoiseRecorder(repaint.sampler.timesteps.tolist(), run.sched.alphas_cumprod,
                                run.settings.sample.gif_frames) if gif else None)
    done, outs = 0, []
    batches = fills(run, repaint, face, n=n, seed=seed, batch_size=batch_size, callback=recorder,
                    eps_wrap=lambda eps: counted(eps, lambda calls: bar.update(calls, f"fills {done}/{n}")))
    for batch in batches:
        save_fills(batch, out_dir / "fills", done)
        if done == 0 and recorder is not None:
            recorder.save(out_dir / "denoise.gif")
        outs.append(batch)
        done += len(batch)
        bar.line(f"fills {done}/{n}", force=True)
    bar.close()
    return torch.cat(outs)
