"""Colours of one checkpoint's samples under every x̂_0 mode and sampler, against its data.

    PYTHONPATH=src .venv/bin/python benchmarks/colour_x0.py RUN --sampler ddim:50,dpmsolver++:20,ddpm:250 \\
        [--x0 none,clip,clip_eps,dynamic] [--n 256] [--ref-n 2048] [--seed 0] [--out results.jsonl]

No Inception: the check is the cheap one `ddpmkit fid` prints beside FID (fid/colour.py):
per-channel mean and std (0-255) and the fraction of channel values at 0 or 255. Every mode samples
from the same seeds, so the rows differ only by what the sampler does with x̂_0. A mode that a
sampler cannot tell apart from another (DDPM and DPM-Solver++ use x̂_0 alone, so clip and clip_eps
are one thing there) is sampled once and printed for both. Prints a Markdown table; --out appends
one JSON line per row.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

from ddpmkit.checkpoint import load_model
from ddpmkit.device import resolve_device
from ddpmkit.fid.colour import ColourStats, colour_stats, source_colour
from ddpmkit.fid.sources import default_reference
from ddpmkit.generate import eps_fn, generate
from ddpmkit.images import to_uint8
from ddpmkit.samplers import make_sampler
from ddpmkit.schedule import NoiseSchedule

MODES = ("none", "clip", "clip_eps", "dynamic")
SAME_AS_CLIP = {"ddpm", "dpmsolver++"}  # these step with x̂_0 alone: clip_eps == clip


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="run directory or checkpoint")
    p.add_argument("--sampler", default="ddim:50,dpmsolver++:20", help="comma list of NAME:STEPS")
    p.add_argument("--x0", default=",".join(MODES), help="comma list of x̂_0 modes")
    p.add_argument("--n", type=int, default=256, help="samples per row")
    p.add_argument("--ref-n", type=int, default=2048, help="reference images (the first n of the training split)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, help="append one JSON line per row here")
    return p.parse_args(argv)


def colours_of(model: Any, settings: Any, sampler: str, steps: int, x0: str, a: argparse.Namespace,
               dev: torch.device) -> ColourStats:
    sched = NoiseSchedule.from_config(settings.diffusion).to(dev)
    cfg = settings.sample.model_copy(update={"sampler": sampler, "steps": steps, "x0": x0})
    eps = eps_fn(model, dev, prediction=settings.diffusion.prediction, sched=sched)
    shape = (settings.model.in_channels, settings.data.size, settings.data.size)
    with torch.no_grad():
        return colour_stats(to_uint8(x) for x in generate(eps, make_sampler(sched, cfg), a.n, shape, seed=a.seed,
                                                          batch_size=a.batch_size, device=dev))


def row(name: str, c: ColourStats) -> str:
    return (f"| {name} | {100 * c.saturated_all:.2f} | {' / '.join(f'{v:.0f}' for v in c.mean)} | "
            f"{' / '.join(f'{v:.0f}' for v in c.std)} |")


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    dev = resolve_device(a.device)
    model, settings, step = load_model(a.run, dev)
    ref, _, _ = source_colour(default_reference(settings.data, settings.data.split, a.ref_n),
                              settings.data.cache_dir / "fid")
    print(f"{a.run} step {step:,} ({settings.diffusion.prediction}-prediction, {settings.data.size} px); "
          f"{a.n} samples per row, seed {a.seed}; reference: {ref.n} training images")
    print("\n| sampler, x̂_0 | saturated % | mean R / G / B | std R / G / B |\n|---|---:|---:|---:|")
    print(row("data", ref))
    done: dict[tuple[str, int, str], ColourStats] = {}
    for spec in a.sampler.split(","):
        sampler, steps = spec.split(":")[0], int(spec.split(":")[1])
        for x0 in a.x0.split(","):
            key = (sampler, steps, "clip" if (x0 == "clip_eps" and sampler in SAME_AS_CLIP) else x0)
            t0 = time.time()
            if key not in done:
                done[key] = colours_of(model, settings, sampler, steps, key[2], a, dev)
            c = done[key]
            print(row(f"{sampler}-{steps}, {x0}", c), flush=True)
            if a.out:
                rec = {"run": str(a.run), "step": step, "prediction": settings.diffusion.prediction,
                       "sampler": sampler, "steps": steps, "x0": x0, "n": a.n, "seed": a.seed,
                       "samples": c.to_dict(), "reference": ref.to_dict(), "seconds": round(time.time() - t0, 1),
                       "threads": torch.get_num_threads(), "date": datetime.date.today().isoformat(),
                       "command": shlex.join(["python", "benchmarks/colour_x0.py", *argv])}
                with open(a.out, "a") as fh:
                    fh.write(json.dumps(rec, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
