"""How closely DDIM inversion then DDIM decoding gives back real images, on a trained model.

    PYTHONPATH=src .venv/bin/python benchmarks/inversion_check.py RUN [--images 8] [--steps 50 100 200]
        [--refine 0 2] [--device cpu]

Images: the first --images faces of the run's own data stream when it trained on the generated
demo faces (`data.synthetic`, the run's size and seed), else files given with --files (cropped as
the run's data was). Each is encoded to x_T by `samplers.inversion.ddim_invert` (η = 0, x̂_0
unclipped, `refine` fixed-point calls a step) and decoded by the same DDIM; the table gives the
mean absolute error in 8-bit levels, the worst pixel error, and the PSNR, for every step count
and refine. The errors are those of float32 arithmetic on the given device: deterministic on one
machine, nearly the same on others. No timings are printed (they would be the machine's load).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ddpmkit.checkpoint import load_model
from ddpmkit.data.synthetic import make_faces
from ddpmkit.device import resolve_device
from ddpmkit.generate import eps_fn
from ddpmkit.interpolation import load_face, reconstruction_error
from ddpmkit.samplers import sample
from ddpmkit.samplers.inversion import ddim_invert, invertible_ddim
from ddpmkit.schedule import NoiseSchedule


def images_of(settings, count: int, files: list[Path]) -> torch.Tensor:
    """(B, 3, S, S) in [-1, 1]: the given files, else the run's first demo faces."""
    if files:
        return torch.cat([load_face(p, settings.data.crop, settings.data.size) for p in files])
    if settings.data.dataset != "synthetic":
        sys.exit("this run did not train on the demo faces: give --files")
    faces = make_faces(count, settings.data.size, settings.data.synthetic_seed)
    return faces.float() / 127.5 - 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--files", type=Path, nargs="*", default=[])
    ap.add_argument("--steps", type=int, nargs="+", default=[50, 100, 200])
    ap.add_argument("--refine", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev = resolve_device(args.device)
    model, settings, step = load_model(args.run, dev)
    sched = NoiseSchedule.from_config(settings.diffusion).to(dev)
    eps = eps_fn(model, dev, "fp32", prediction=settings.diffusion.prediction, sched=sched)
    x0 = images_of(settings, args.images, args.files).to(dev)
    print(f"{args.run} (step {step:,}, {settings.data.size} px, T = {sched.T}): {len(x0)} images, "
          f"DDIM inversion then DDIM decoding, float32 on {dev}")
    print("| steps | refine | network calls | mean abs error (levels of 255) | max error | PSNR (dB) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for steps in args.steps:
        smp = invertible_ddim(sched, steps)
        for refine in args.refine:
            x_T = ddim_invert(eps, smp, x0, refine=refine)
            rec = sample(eps, smp, tuple(x0.shape), x_T=x_T, device=dev).clamp(-1, 1)
            mae, psnr = reconstruction_error(rec.cpu(), x0.cpu())
            worst = float((rec - x0).abs().max()) * 127.5
            print(f"| {steps} | {refine} | {steps * (2 + refine)} | {mae:.2f} | {worst:.1f} | {psnr:.1f} |", flush=True)


if __name__ == "__main__":
    main()
