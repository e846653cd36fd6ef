"""The pictures of one quality run: samples beside real faces, and its loss and FID curves (docs/celeba.md).

    PYTHONPATH=src .venv/bin/python benchmarks/quality_figures.py RUN --name c32-60min \\
        [--data data/cache/celeba-official-32-ddim-train-XXXX] [--jsonl benchmarks/quality_runs.jsonl] \\
        [--sampler dpmsolver++] [--steps 20] [--x0 clip] [--n 64] [--seed 0] [--out docs/celeba32]

RUN: a run directory of `benchmarks/quality_cpu.py` (its final checkpoint is sampled).
Writes OUT_samples.png (left: N samples of the EMA model, right: the first N faces of the
prepared data, both 8 to a row, enlarged 3x) and OUT_curves.png (the training loss, raw and
smoothed, and FID of --name's rows of --jsonl against the step). Prints the commands that made
them, for docs/celeba.md.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ddpmkit.checkpoint import load_model
from ddpmkit.data.cache import open_images
from ddpmkit.generate import eps_fn, generate
from ddpmkit.images import make_grid_image, save_png, scale_nearest
from ddpmkit.report import plots
from ddpmkit.report.collect import read_run
from ddpmkit.report.sections import loss_title
from ddpmkit.samplers import make_sampler
from ddpmkit.schedule import NoiseSchedule

REPO = Path(__file__).resolve().parents[1]
SCALE = 3
LABEL_H = 28


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--name", required=True, help="the run's name in --jsonl (its FID rows)")
    p.add_argument("--data", type=Path, help="a prepared cache (its first N images are the real faces)")
    p.add_argument("--jsonl", type=Path, default=REPO / "benchmarks" / "quality_runs.jsonl")
    p.add_argument("--sampler", default="dpmsolver++")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--x0", default="clip")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "docs" / "celeba32"), help="path prefix of the two PNGs")
    return p.parse_args(argv)


def samples(run: Path, a: argparse.Namespace) -> tuple[torch.Tensor, int]:
    """(n, 3, S, S) in [-1, 1] from the run's final EMA weights, and the checkpoint's step."""
    device = torch.device("cpu")
    model, settings, step = load_model(run, device)
    sched = NoiseSchedule.from_config(settings.diffusion).to(device)
    smp = make_sampler(sched, settings.sample.model_copy(update={"sampler": a.sampler, "steps": a.steps, "x0": a.x0}))
    eps = eps_fn(model, device, prediction=settings.diffusion.prediction, sched=sched)
    size = int(settings.data.size)
    with torch.no_grad():
        x = torch.cat(list(generate(eps, smp, a.n, (3, size, size), seed=a.seed, batch_size=64, device=device)))
    return x, step


def real_faces(cache: Path, n: int) -> torch.Tensor:
    """The first n images of a prepared cache, (n, 3, S, S) in [-1, 1]."""
    images = open_images(cache)
    return torch.from_numpy(np.array(images[:n])).float() / 127.5 - 1.0


def labelled(img: Image.Image, text: str) -> Image.Image:
    out = Image.new("RGB", (img.width, img.height + LABEL_H), "white")
    out.paste(img, (0, LABEL_H))
    ImageDraw.Draw(out).text((4, 8), text, fill="black")
    return out


def side_by_side(left: Image.Image, right: Image.Image, gap: int = 16) -> Image.Image:
    out = Image.new("RGB", (left.width + gap + right.width, max(left.height, right.height)), "white")
    out.paste(left, (0, 0))
    out.paste(right, (left.width + gap, 0))
    return out


def fid_rows(jsonl: Path, name: str) -> list[dict]:
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    return sorted((r for r in rows if r.get("name") == name), key=lambda r: r["step"])


def curves(run: Path, rows: list[dict]) -> Image.Image:
    """The loss panel (the run's log, read as the report reads it) and, given rows, the FID panel."""
    data = read_run(run)
    steps, losses = [r["step"] for r in data.train_log], [r["loss"] for r in data.train_log]
    loss = plots.raw_and_smoothed(steps, losses, loss_title(data.config), "loss", log_y=True)
    panels = [Image.open(io.BytesIO(loss)).convert("RGB")]
    if rows:
        label = f"FID ({rows[0]['n']:,} samples, {rows[0]['sampler']} {rows[0]['steps']})"
        fid = plots.line([r["step"] for r in rows], [r["fid"] for r in rows], label, "FID", marker="o")
        panels.append(Image.open(io.BytesIO(fid)).convert("RGB"))
    out = panels[0]
    for p in panels[1:]:
        out = side_by_side(out, p, gap=0)
    return out


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    torch.set_grad_enabled(False)
    x, step = samples(a.run, a)
    nrow = int(math.sqrt(a.n)) if int(math.sqrt(a.n)) ** 2 == a.n else 8
    left = labelled(scale_nearest(make_grid_image(x, nrow=nrow), SCALE),
                    f"samples: step {step:,}, {a.sampler} {a.steps} steps, seed {a.seed}")
    pictures = left
    if a.data is not None:
        right = labelled(scale_nearest(make_grid_image(real_faces(a.data, a.n), nrow=nrow), SCALE),
                         f"real faces: the first {a.n} of {a.data.name}")
        pictures = side_by_side(left, right)
    out_samples = save_png(pictures, f"{a.out}_samples.png")
    out_curves = save_png(curves(a.run, fid_rows(a.jsonl, a.name)), f"{a.out}_curves.png")
    print(f"wrote {out_samples} and {out_curves}")
    print("command: python benchmarks/quality_figures.py " + " ".join(shlex.quote(s) for s in (argv or sys.argv[1:])))


if __name__ == "__main__":
    main()
