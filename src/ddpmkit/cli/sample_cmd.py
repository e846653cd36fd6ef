"""`ddpmkit sample`: images, a grid and optionally a GIF of the denoising, from a checkpoint.

Every option is checked before anything is printed or created. Images are written batch by
batch as they are made (a huge --n never fills memory, and a long run shows results early):
grid.png from the first images after the first batch, denoise.gif right after the first batch.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

import typer
from typing_extensions import Annotated

from ddpmkit.cli.common import (ConfigOpt, PresetOpt, SetOpt, console, default_is, from_preset, newest_run,
                                resolve_sample_config, resolve_settings, user_errors)
from ddpmkit.errors import DdpmkitError
from ddpmkit.sections import MAX_SEED
from ddpmkit.io_utils import free_dir
from ddpmkit.progress import Progress

if TYPE_CHECKING:
    from torch import Tensor

    from ddpmkit.schedule import NoiseSchedule
    from ddpmkit.settings import SampleConfig

GRID_MAX = 64  # grid.png shows the first 64 images at most (8x8)
RUN = "the run's settings"
GUIDANCE = 3.0  # --guidance when --attr is given without it
ATTR_HELP = ("Ask for an attribute of a conditional run (train --condition attributes): Name = present, -Name = "
             "absent (repeatable; names as the run's attribute file, any case). Attributes not named are left "
             "unspecified: 'any', as training hid attributes at random (train.hide_attributes).")
GUIDANCE_HELP = ("Classifier-free guidance weight with --attr: 0 = the unconditional model, 1 = the plain "
                 "conditional model, > 1 = the attributes more surely (fewer kinds of faces); works with every "
                 "sampler. " + default_is(f"{GUIDANCE:g}"))


@user_errors
def sample(
    checkpoint: Annotated[Optional[Path], typer.Argument(metavar="[RUN]", help="Run directory, checkpoint folder or .safetensors. " + default_is("the newest run under runs/"), show_default=False)] = None,  # noqa: E501
    n: Annotated[Optional[int], typer.Option("--n", help=from_preset("Number of images.", "sample.n", what=RUN))] = None,
    seed: Annotated[Optional[int], typer.Option(help=from_preset("Seed: image i of seed s is the same for any --n, --batch-size or device; different seeds share no image.", "sample.seed", what=RUN))] = None,  # noqa: E501
    sampler: Annotated[Optional[str], typer.Option(help=from_preset("ddpm, ddim or dpmsolver++.", "sample.sampler", what=RUN))] = None,
    steps: Annotated[Optional[int], typer.Option(help=from_preset("Network calls (unset: T for ddpm, 50 otherwise).", "sample.steps", what=RUN))] = None,  # noqa: E501
    eta: Annotated[Optional[float], typer.Option(help=from_preset("DDIM η: 0 deterministic, 1 DDPM-like.", "sample.eta", what=RUN))] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help=from_preset("Images per batch.", "sample.batch_size", what=RUN))] = None,  # noqa: E501
    gif: Annotated[bool, typer.Option("--gif", metavar="", help="Also write denoise.gif: x_T to x_0 (the first batch).")] = False,
    scale: Annotated[Optional[int], typer.Option("--scale", help="Enlarge grid.png by this whole factor (nearest). " + default_is("to a readable size"), show_default=False)] = None,  # noqa: E501
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder. " + default_is("outputs/samples/RUN-stepN-SAMPLERSTEPS-seedS"), show_default=False)] = None,  # noqa: E501
    force: Annotated[bool, typer.Option("--force", metavar="", help="Write into --out even if it holds files.")] = False,
    no_ema: Annotated[bool, typer.Option("--no-ema", metavar="", help="Use the raw weights instead of the EMA.")] = False,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:N or mps. " + default_is("auto"), show_default=False)] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", metavar="", show_default=False, help="A bar in a terminal, plain lines when piped (default); --no-progress: neither.")] = True,  # noqa: E501
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
        _sample(checkpoint, asked, dev, dist, n=n, seed=seed, sampler=sampler, steps=steps, eta=eta,
                batch_size=batch_size, gif=gif, scale=scale, out=out, force=force, no_ema=no_ema,
                progress=progress, attr=attr, guidance=guidance, config=config, sets=sets)


def _sample(checkpoint: Optional[Path], asked: Any, dev: Any, dist: Any, *, n: Optional[int], seed: Optional[int],
            sampler: Optional[str], steps: Optional[int], eta: Optional[float], batch_size: Optional[int], gif: bool,
            scale: Optional[int], out: Optional[Path], force: bool, no_ema: bool, progress: bool,
            attr: Optional[list[str]], guidance: Optional[float], config: Optional[Path],
            sets: Optional[list[str]]) -> None:
    """`sample` in one process of `dist` (all of it without torchrun), on device `dev`."""
    # lazy, as in sample()
    from ddpmkit.checkpoint import load_model
    from ddpmkit.samplers import make_sampler
    from ddpmkit.schedule import NoiseSchedule

    path = checkpoint if checkpoint is not None else newest_run(need_checkpoint=True)
    model, settings, step = load_model(path, dev, use_ema=not no_ema, fallback_settings=asked)
    options = {"n": n, "seed": seed, "sampler": sampler, "steps": steps, "eta": eta, "batch_size": batch_size}
    cfg = resolve_sample_config(settings.sample, settings.diffusion.timesteps, config, sets, options)
    check_options(cfg, scale)
    cond, w, wanted = asked_condition(settings.model.cond_dim, settings.model.cond_names, attr or [], guidance)
    sched = NoiseSchedule.from_config(settings.diffusion).to(dev)
    smp = make_sampler(sched, cfg)
    label = f"{Path(path).resolve().name}-step{step}-{cfg.sampler}{cfg.steps}-seed{cfg.seed}" + wanted
    out_dir = output_folder(out, force, cfg.out_dir / label)
    dist.barrier()  # every process named the folder before any makes it
    # everything is checked: from here on, output
    say_which_run(checkpoint is None, path, step, "sampling from")
    where = f"on {dev}" + (f" x {dist.world_size} processes" if dist.enabled else "")
    console.print(f"sampling {cfg.n:,} images{' (' + wanted[1:] + ')' if wanted else ''} with {cfg.sampler} ({cfg.steps} steps) {where} from step {step:,}"
                  f" into {out_dir}", markup=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    shape = (settings.model.in_channels, settings.data.size, settings.data.size)
    first, count = dist.shard(cfg.n)
    writer = SampleWriter(out_dir, cfg.n, scale, start=first, grid=dist.is_main)
    draw(model, smp, sched, cfg, shape, dev, writer, gif=gif and dist.is_main, progress=progress,
         prediction=settings.diffusion.prediction, cond=cond, guidance=w, share=(first, count))
    dist.barrier()  # every process has written its images
    if dist.enabled and dist.is_main:
        writer.regrid()
    files = "grid.png, images/" + (", denoise.gif" if gif else "")
    console.print(f"wrote {cfg.n:,} images in {time.perf_counter() - writer.t0:.1f}s to {out_dir} ({files})",
                  markup=False, soft_wrap=True)


def draw(model: Any, smp: Any, sched: "NoiseSchedule", cfg: "SampleConfig", shape: tuple[int, int, int],
         dev: Any, writer: "SampleWriter", *, gif: bool, progress: bool, prediction: str,
         cond: Optional["Tensor"] = None, guidance: float = 1.0, share: Optional[tuple[int, int]] = None) -> None:
    """Sample cfg.n images batch by batch into `writer`, with progress; Ctrl-C keeps what is written.
    prediction: the run's diffusion.prediction (a v-network's output becomes ε in `eps_fn`).
    cond: (K,) attributes for a conditional model, guided with weight `guidance` (None: unconditional).
    share: (first index, count) of this process's images (torchrun); default all cfg.n."""
    # lazy, as in sample(): torch loads when the command runs, not for `ddpmkit --help`
    from ddpmkit.generate import eps_fn, generate
    from ddpmkit.pictures import DenoiseRecorder
    from ddpmkit.sampling_network import SamplingNetwork

    first, count = share or (0, cfg.n)
    net = SamplingNetwork(model, dev, cfg, log=lambda m: console.print(m, markup=False))
    batch = net.batch_size(cfg.batch_size, count, shape, calls=2 if cond is not None and guidance not in (0, 1) else 1)
    n_batches = -(-count // batch)
    bar = Progress("sample", n_batches * len(smp.timesteps), mode="auto" if progress else "off", console=console,
                   info=f"images 0/{count:,}")
    recorder = DenoiseRecorder(smp.timesteps.tolist(), sched.alphas_cumprod, cfg.gif_frames) if gif else None
    eps = counted(eps_fn(net, dev, prediction=prediction, sched=sched, cond=cond, guidance=guidance),
                  lambda calls: writer.report(bar, calls))
    batches = generate(eps, smp, count, shape, seed=cfg.seed, batch_size=batch, device=dev,
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


def asked_condition(cond_dim: int, names: tuple[str, ...], attrs: list[str],
                    guidance: Optional[float]) -> tuple[Optional["Tensor"], float, str]:
    """--attr and --guidance against the run's attributes: (condition (K,) or None, guidance weight,
    a folder-name suffix such as "-attr_Eyeglasses+Smiling-Male-w3", "" without --attr). One-line errors."""
    from ddpmkit.conditioning import attribute_label, attribute_vector  # lazy: imports torch

    if not attrs:
        if guidance is not None:
            raise DdpmkitError("--guidance needs --attr: it weighs the asked attributes against none")
        return None, 1.0, ""
    if not cond_dim:
        raise DdpmkitError("--attr: this run is unconditional (trained without --condition attributes); "
                           "sample it without --attr")
    if len(names) != cond_dim:
        raise DdpmkitError(f"--attr: this run stores no attribute names for its {cond_dim} condition entries")
    w = GUIDANCE if guidance is None else guidance
    if not 0 <= w <= 100:
        raise DdpmkitError(f"--guidance {w:g} is out of range: 0 (unconditional) to 100")
    cond = attribute_vector(names, attrs)
    return cond, w, f"-{attribute_label(names, cond)}-w{w:g}"


def output_folder(out: Optional[Path], force: bool, default: Path) -> Path:
    """--out (refused if it holds files, unless --force), else a fresh folder named after the run.
    Checks that it can be made (no file in its place or above it, a writable parent); makes nothing."""
    if out is not None:
        if out.is_dir() and any(out.iterdir()) and not force:
            raise DdpmkitError(f"output folder {out} already holds files; pass --force or choose another --out")
        target = out
    else:
        target = free_dir(default)
    for p in [target, *target.parents]:
        if not p.exists():
            continue
        if not p.is_dir():
            where = f"output folder {target}" if p == target else f"{p} (on the way to {target})"
            raise DdpmkitError(f"{where} is a file, not a folder: choose another --out")
        if not os.access(p, os.W_OK | os.X_OK):
            raise DdpmkitError(f"cannot write into {p} (permission denied): choose another --out")
        break
    return target


def say_which_run(newest: bool, path: Path, step: int, doing: str) -> None:
    """Say which run a command took when it took the newest one ("sampling from the newest run:
    ..."), and warn when the checkpoint is far short of its run's plan (`short_of_plan`)."""
    from ddpmkit.checkpoint import resolve_checkpoint

    if newest:
        console.print(f"{doing} the newest run: {path} (step {step:,})", markup=False)
    short = short_of_plan(resolve_checkpoint(path).path, step)
    if short:
        console.print(f"[yellow]warning:[/] {short}", soft_wrap=True)


def short_of_plan(ckpt: Path, step: int) -> Optional[str]:
    """A warning when the checkpoint is far short of its run's planned steps (run.json total_steps)."""
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt
    try:
        total = json.loads((run / "run.json").read_text()).get("total_steps")
    except (OSError, ValueError):
        return None
    if not isinstance(total, int) or total <= 0 or step >= total / 2:
        return None
    outcome = "samples will be noise" if step < total / 10 else "samples will be rough"
    return f"step {step:,} of {total:,}: {outcome} (train on: ddpmkit train --run-dir {run} --resume)"


def counted(eps: Callable[..., "Tensor"], on_call: Callable[[int], None]) -> Callable[..., "Tensor"]:
    """eps(x_t, t) that reports the number of network calls so far after each one."""
    calls = 0

    def eps_counted(x: "Tensor", t: "Tensor") -> "Tensor":
        nonlocal calls
        e = eps(x, t)
        calls += 1
        on_call(calls)
        return e

    return eps_counted


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
