"""What each job does on the device, through the same rooms as the commands: `generate` (as
`ddpmkit sample`), `inpainting` (as `ddpmkit inpaint`), `interpolation` (as `ddpmkit
interpolate`). Each writes into its job's folder and tells the page as it goes: live denoising
pictures (x_t beside the predicted x̂_0, the frames of the denoising GIF) as they are computed,
and each batch of pictures as soon as it is written.

The requests are checked before a job is queued (`forms.py`); here they are plain values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from ddpmkit.conditioning import asked_condition
from ddpmkit.generate import generate
from ddpmkit.images import save_grid, save_images
from ddpmkit.inpainting import face_and_mask, fills, repaint_chain, save_fills, write_pictures
from ddpmkit.interpolation import walk, walk_calls, walk_sampler, write_walk
from ddpmkit.pictures import DenoiseRecorder
from ddpmkit.samplers import make_sampler
from ddpmkit.faces import face_x0
from ddpmkit.serve.faces import png_bytes
from ddpmkit.serve.jobs import JobContext, Work
from ddpmkit.serve.runs import ServedRuns
from ddpmkit.settings import SampleConfig

LIVE_IMAGES = 16  # the live pictures and the GIF show the first 16 images, as `sample --gif`


class LiveFrames(DenoiseRecorder):
    """The denoising GIF's recorder that also hands each frame to the page as it is made (PNG).
    timesteps: the sampler's visited indices, decreasing; alphas_cumprod: (T,) ᾱ."""

    def __init__(self, ctx: JobContext, timesteps: Sequence[int], alphas_cumprod: Tensor, frames: int) -> None:
        super().__init__(timesteps, alphas_cumprod, frames=max(2, min(frames, len(timesteps) + 1)),
                         max_images=LIVE_IMAGES)
        self.ctx = ctx

    def __call__(self, i: int, t: int, x: Tensor, x0: Optional[Tensor]) -> None:
        had = len(self.frames)
        super().__call__(i, t, x, x0)
        for frame in self.frames[had:]:  # fast compression: a frame is shown once, then replaced
            self.ctx.frame(png_bytes(frame, compress_level=1), f"step {i + 1} of {len(self.timesteps)}")


@dataclass(frozen=True)
class GenerateJob:
    """Images from a run, unconditional or with attributes: cfg.n images of cfg.seed."""

    run: str
    cfg: SampleConfig
    attrs: tuple[str, ...] = ()  # "Name" present, "-Name" absent
    guidance: Optional[float] = None

    def work(self, runs: ServedRuns) -> Work:
        return lambda ctx: self.run_in(ctx, runs)

    def seeds(self) -> list[int]:
        return [self.cfg.seed]

    def run_in(self, ctx: JobContext, runs: ServedRuns) -> dict[str, Any]:
        opened = runs.open(self.run)
        cfg = self.cfg
        m = opened.settings.model
        cond, w, _ = asked_condition(m.cond_dim, m.cond_names, list(self.attrs), self.guidance)
        smp = make_sampler(opened.sched, cfg)
        live = LiveFrames(ctx, smp.timesteps.tolist(), opened.sched.alphas_cumprod, cfg.gif_frames)
        batch = opened.batch_size(cfg.batch_size, cfg.n, calls=2 if cond is not None and w not in (0, 1) else 1)
        total = -(-cfg.n // batch) * len(smp.timesteps)
        eps = ctx.counted(opened.denoiser.eps(cond, w), total)
        made: list[Tensor] = []
        paths: list[Path] = []
        for x in generate(eps, smp, cfg.n, opened.shape, seed=cfg.seed, batch_size=batch,
                          device=opened.denoiser.device, callback=live):
            new = save_images(x, ctx.folder / "images", start=len(paths))
            ctx.images(new)
            paths += new
            made.append(x.cpu())
        save_grid(torch.cat(made), ctx.folder / "grid.png")
        live.save(ctx.folder / "denoise.gif")
        return {"images": [ctx.url(p) for p in paths], "grid": ctx.url(ctx.folder / "grid.png"),
                "gif": ctx.url(ctx.folder / "denoise.gif"), "seed": cfg.seed}


@dataclass(frozen=True)
class InpaintJob:
    """n RePaint fills of `image` (a file or demo:K) under `mask` (a built-in name or a PNG)."""

    run: str
    image: str
    mask: str
    n: int
    steps: int
    jump: int
    resample: int
    seed: int

    def work(self, runs: ServedRuns) -> Work:
        return lambda ctx: self.run_in(ctx, runs)

    def seeds(self) -> list[int]:
        return [self.seed]

    def run_in(self, ctx: JobContext, runs: ServedRuns) -> dict[str, Any]:
        opened = runs.open(self.run)
        face = face_and_mask(self.image, self.mask, self.seed, opened.settings)
        repaint = repaint_chain(opened, self.steps, self.jump, self.resample)
        live = LiveFrames(ctx, repaint.sampler.timesteps.tolist(), opened.sched.alphas_cumprod,
                          opened.settings.sample.gif_frames)
        batch_size = opened.batch_size(opened.settings.sample.batch_size, self.n)
        total = -(-self.n // batch_size) * len(repaint)
        outs: list[Tensor] = []
        for batch in fills(opened, repaint, face, n=self.n, seed=self.seed, batch_size=batch_size, callback=live,
                           eps_wrap=lambda eps: ctx.counted(eps, total)):
            first = sum(len(b) for b in outs)
            save_fills(batch, ctx.folder / "fills", first)
            ctx.images(sorted((ctx.folder / "fills").glob("*.png"))[first:])
            outs.append(batch)
        write_pictures(ctx.folder, face, torch.cat(outs))
        live.save(ctx.folder / "denoise.gif")
        fills_made = sorted((ctx.folder / "fills").glob("*.png"))
        return {"images": [ctx.url(p) for p in fills_made], "grid": ctx.url(ctx.folder / "grid.png"),
                "input": ctx.url(ctx.folder / "input.png"), "mask": ctx.url(ctx.folder / "mask.png"),
                "gif": ctx.url(ctx.folder / "denoise.gif"), "masked": round(float(face.fill.float().mean()), 4)}


@dataclass(frozen=True)
class InterpolateJob:
    """A walk of `frames` pictures between two seeds or two faces (read as the run's data when
    the job starts, encoded by DDIM inversion), decoded by η = 0 DDIM with cfg.steps steps."""

    run: str
    cfg: SampleConfig
    seed_pair: tuple[int, ...] = ()  # the two seeds, or none for faces
    faces: tuple[str, ...] = ()  # two files or demo:K (`faces.face_x0`)
    frames: int = 16
    refine: int = 2

    def work(self, runs: ServedRuns) -> Work:
        return lambda ctx: self.run_in(ctx, runs)

    def seeds(self) -> list[int]:
        return list(self.seed_pair)

    def run_in(self, ctx: JobContext, runs: ServedRuns) -> dict[str, Any]:
        opened = runs.open(self.run)
        from_images = bool(self.faces)
        smp = walk_sampler(opened, self.cfg, from_images)
        batch = opened.batch_size(self.cfg.batch_size, self.frames)
        total = walk_calls(smp, self.frames, batch, from_images, self.refine)
        ends: list[Any] = [face_x0(f, opened.settings) for f in self.faces] if from_images else list(self.seed_pair)
        result = walk(opened, smp, ends, self.frames, batch, refine=self.refine,
                      eps_wrap=lambda eps: ctx.counted(eps, total))
        errors = write_walk(ctx.folder, result, None, bounce=True)
        frames = sorted((ctx.folder / "frames").glob("*.png"))  # shown as the strip; each frame a link
        inputs = ctx.folder / "inputs.png"
        return {"images": [ctx.url(p) for p in frames], "strip": ctx.url(ctx.folder / "strip.png"),
                "gif": ctx.url(ctx.folder / "interpolation.gif"),
                "inputs": ctx.url(inputs) if inputs.is_file() else None,
                "ends": [{"error_levels": round(mae, 2), "psnr": round(psnr, 1)} for mae, psnr in errors]}

