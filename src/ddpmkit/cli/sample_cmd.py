"""`ddpmkit sample`: images, a grid and optionally a GIF of the denoising, from a checkpoint.

Every option is checked before anything is printed or created. Images are written batch by
batch as they are made (a huge --n never fills memory, and a long run shows results early):
grid.png from the first images after the first batch, denoise.gif right after the first batch.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

import typer
from typing_extensions import Annotated

from ddpmkit.cli.common import (ConfigOpt, PresetOpt, console, counted, default_is, from_preset, open_run,
                                output_folder, resolve_sample_config, resolve_settings, say_which_run, user_errors)
from ddpmkit.cli.options import DeviceOpt, ForceOpt, NoEmaOpt, ProgressOpt, RunArg, n_option, out_option, set_option
from ddpmkit.errors import DdpmkitError
from ddpmkit.progress import Progress
from ddpmkit.settings import GUIDANCE, MAX_SEED

if TYPE_CHECKING:
    from torch import Tensor

    from ddpmkit.generate import OpenRun
    from ddpmkit.settings import SampleConfig

GRID_MAX = 64  # grid.png shows the first 64 images at most (8x8)
RUN = "the run's settings"
SetOpt = set_option("sample.eta=0.5")
ATTR_HELP = ("Ask for an attribute of a conditional run (train --condition attributes): Name = present, -Name = "
             "absent (repeatable; names as the run's attribute file, any case). Attributes not named are left "
             "unspecified: 'any', as training hid attributes at random (train.hide_attributes).")
GUIDANCE_HELP = ("Classifier-free guidance weight with --attr: 0 = the unconditional model, 1 = the plain "
                 "conditional model, > 1 = the attributes more surely (fewer kinds of faces); works with every "
                 "sampler. " + default_is(f"{GUIDANCE:g}"))


@user_errors
def sample(
    run: RunArg = None,
    n: n_option(from_preset("Number of images.", "sample.n", what=RUN)) = None,
    seed: Annotated[Optional[int], typer.Option(help=from_preset("Seed: image i of seed s is the same for any --n, --batch-size or device; different seeds share no image.", "sample.seed", what=RUN))] = None,  # noqa: E501
    sampler: Annotated[Optional[str], typer.Option(help=from_preset("ddpm, ddim or dpmsolver++.", "sample.sampler", what=RUN))] = None,
    steps: Annotated[Optional[int], typer.Option(help=from_preset("Network calls (unset: T for ddpm, 50 otherwise).", "sample.steps", what=RUN))] = None,  # noqa: E501
    eta: Annotated[Optional[float], typer.Option(help=from_preset("DDIM η: 0 deterministic, 1 DDPM-like.", "sample.eta", what=RUN))] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help=from_preset("Images per batch.", "sample.batch_size", what=RUN))] = None,  # noqa: E501
    gif: Annotated[bool, typer.Option("--gif", metavar="", help="Also write denoise.gif: x_T to x_0 (the first batch).")] = False,
    scale: Annotated[Optional[int], typer.Option("--scale", help="Enlarge grid.png by this whole factor (nearest). " + default_is("to a readable size"), show_default=False)] = None,  # noqa: E501
    out: out_option("outputs/samples/RUN-stepN-SAMPLERSTEPS-seedS") = None,
    force: ForceOpt = False,
    no_ema: NoEmaOpt = False,
    device: DeviceOpt = None,
    progress: ProgressOpt = True,
    attr: Annotated[Optional[list[str]], typer.Option("--attr", metavar="[-]NAME", help=ATTR_HELP, show_default=False)] = None,  # noqa: E501
    guidance: Annotated[Optional[float], typer.Option("--guidance", metavar="W", help=GUIDANCE_HELP, show_default=False)] = None,  # noqa: E501
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    sets: SetOpt = None,
) -> None:
    """Generate faces with a trained model: grid.png, images/*.png and (--gif) denoise.gif.

    Example: ddpmkit sample --n 64 --gif   (the newest run under runs/)

    Conditional run: ddpmkit sample RUN --attr Smiling --attr Eyeglasses --attr -Male --guidance 3
    """
    # lazy: torch and the model code load when the command runs, not for `ddpmkit --help`
    from ddpmkit.cli.torchrun import processes

    asked = resolve_settings(config, preset, sets, {"train": {"device": device}})
    with processes(asked.train.device) as (dist, dev):
        opened, newest = open_run(run, asked, no_ema, dev)
        options = {"n": n, "seed": seed, "sampler": sampler, "steps": steps, "eta": eta, "batch_size": batch_size}
        cfg = resolve_sample_config(opened.settings.sample, opened.settings.diffusion.timesteps, config, sets, options)
        check_options(cfg, scale)
        _sample(opened, newest, cfg, dist, gif=gif, scale=scale, out=out, force=force, progress=progress, attr=attr,
                guidance=guidance)


def _sample(opened: "OpenRun", newest: bool, cfg: "SampleConfig", dist: Any, *, gif: bool, scale: Optional[int],
            out: Optional[Path], force: bool, progress: bool, attr: Optional[list[str]],
            guidance: Optional[float]) -> None:
    """`sample` in one process of `dist` (all of it without torchrun): its share of the images."""
    # lazy, as in sample()
    from ddpmkit.conditioning import asked_condition
    from ddpmkit.samplers import make_sampler

    m = opened.settings.model
    cond, w, wanted = asked_condition(m.cond_dim, m.cond_names, attr or [], guidance)
    smp = make_sampler(opened.sched, cfg)
    out_dir = output_folder(out, force, cfg.out_dir / f"{opened.label}-{cfg.sampler}{cfg.steps}-seed{cfg.seed}{wanted}")
    dist.barrier()  # every process named the folder before any makes it
    # everything is checked: from here on, output
    say_which_run(opened, newest, "sampling from")
    where = f"on {opened.denoiser.device}" + (f" x {dist.world_size} processes" if dist.enabled else "")
    console.print(f"sampling {cfg.n:,} images{' (' + wanted[1:] + ')' if wanted else ''} with {cfg.sampler} "
                  f"({cfg.steps} steps) {where} from step {opened.step:,} into {out_dir}", markup=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    first, count = dist.shard(cfg.n)
    writer = SampleWriter(out_dir, cfg.n, scale, start=first, grid=dist.is_main)
    fast = opened.for_sampling(cfg, log=lambda line: console.print(line, markup=False))
    draw(fast, smp, cfg, writer, gif=gif and dist.is_main, progress=progress, cond=cond, guidance=w,
         share=(first, count))
    dist.barrier()  # every process has written its images
    if dist.enabled and dist.is_main:
        writer.regrid()
    files = "grid.png, images/" + (", denoise.gif" if gif else "")
    console.print(f"wrote {cfg.n:,} images in {time.perf_counter() - writer.t0:.1f}s to {out_dir} ({files})",
                  markup=False, soft_wrap=True)


def draw(run: "OpenRun", smp: Any, cfg: "SampleConfig", writer: "SampleWriter", *, gif: bool, progress: bool,
         cond: Optional["Tensor"] = None, guidance: float = 1.0, share: Optional[tuple[int, int]] = None) -> None:
    """Sample cfg.n images batch by batch into `writer`, with progress; Ctrl-C keeps what is written.
    cond: (K,) attributes for a conditional model, guided with weight `guidance` (None: unconditional).
    share: (first index, count) of this process's images (torchrun); default all cfg.n."""
    # lazy, as in sample(): torch loads when the command runs, not for `ddpmkit --help`
    from ddpmkit.generate import generate
    from ddpmkit.pictures import DenoiseRecorder

    first, count = share or (0, cfg.n)
    batch = run.batch_size(cfg.batch_size, count, calls=2 if cond is not None and guidance not in (0, 1) else 1)
    n_batches = -(-count // batch)
    bar = Progress("sample", n_batches * len(smp.timesteps), mode="auto" if progress else "off", console=console,
                   info=f"images 0/{count:,}")
    recorder = DenoiseRecorder(smp.timesteps.tolist(), run.sched.alphas_cumprod, cfg.gif_frames) if gif else None
    eps = counted(run.denoiser.eps(cond, guidance), lambda calls: writer.report(bar, calls))
    batches = generate(eps, smp, count, run.shape, seed=cfg.seed, batch_size=batch, device=run.denoiser.device,
                       callback=recorder, first=first)
    try:
        writer.write_all(batches, recorder, bar)
    except KeyboardInterrupt:
        bar.close()
        console.print(f"interrupted: {writer.done:,} images written to {writer.out_dir}", markup=False)
        raise typer.Exit(130) from None
    bar.close()


def check_options(cfg: "SampleConfig", scale: Optional[int]) -> None:
    """What the settings' own checks leave: the seed is a 64-bit value (each image's noise comes
    from a generator seeded by (seed, image index)), and --scale is a whole factor of at least 1
    (n, batch size and steps vs T are checked already)."""
    if not 0 <= cfg.seed <= MAX_SEED:
        raise DdpmkitError(f"--seed {cfg.seed} is out of range: 0 to {MAX_SEED:,}")
    if scale is not None and not 1 <= scale <= 64:
        raise DdpmkitError(f"--scale {scale} is out of range: a whole factor from 1 to 64")


class SampleWriter:
    """Writes each batch as it comes: images/sample_NNNNN.png, grid.png of the first images,
    and (after the first batch) the denoising GIF."""

    def __init__(self, out_dir: Path, n: int, scale: Optional[int], start: int = 0, grid: bool = True) -> None:
        """n: images of the whole command; start: this writer's first image index (torchrun: its
        process's share); grid: whether it writes grid.png (the process holding the first images)."""
        self.out_dir, self.n, self.scale, self.start, self.grid = out_dir, n, scale, start, grid
        self.digits = max(5, len(str(n - 1)))  # one width for all names, so they sort in order
        self.done = 0
        self.first: list[Any] = []  # the first GRID_MAX images, (b, 3, H, W) tensors
        self.t0 = time.perf_counter()

    def info(self) -> str:
        elapsed = time.perf_counter() - self.t0
        rate = f" · {self.done / elapsed:,.2f} img/s" if self.done and elapsed > 0 else ""
        return f"images {self.done:,}/{self.n:,}{rate}"

    def report(self, bar: "Progress", calls: int, force: bool = False) -> None:
        """Network calls so far on the bar; piped, a plain line every 10 s and after each batch."""
        bar.update(calls, self.info())
        bar.line(self.info(), force=force)

    def write_all(self, batches: Iterable["Tensor"], recorder: Any, bar: "Progress") -> None:
        for k, x in enumerate(batches):
            self.write(x.cpu())
            if k == 0 and recorder is not None:
                recorder.save(self.out_dir / "denoise.gif")
            self.report(bar, bar.done, force=True)

    def regrid(self) -> None:
        """grid.png again from the first images on disk: under torchrun, other processes' too."""
        import torch  # lazy, as in sample()

        from ddpmkit.images import load_image, save_grid

        files = sorted((self.out_dir / "images").glob("sample_*.png"))[:GRID_MAX]
        save_grid(torch.cat([load_image(f) for f in files]), self.out_dir / "grid.png", scale=self.scale)

    def write(self, x: "Tensor") -> None:
        """x: (b, 3, H, W) in [-1, 1], the next b images."""
        # lazy, as in sample(): torch loads when the command runs, not for `ddpmkit --help`
        from PIL import Image

        from ddpmkit.images import save_grid, save_png, to_uint8

        (self.out_dir / "images").mkdir(exist_ok=True)
        for j, img in enumerate(to_uint8(x)):
            pil = Image.fromarray(img.permute(1, 2, 0).contiguous().numpy())
            save_png(pil, self.out_dir / "images" / f"sample_{self.start + self.done + j:0{self.digits}d}.png")
        have = sum(len(b) for b in self.first)
        if self.grid and have < GRID_MAX:
            import torch  # lazy: see above

            self.first.append(x[: GRID_MAX - have])
            save_grid(torch.cat(self.first), self.out_dir / "grid.png", scale=self.scale)
        self.done += len(x)
