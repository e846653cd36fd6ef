"""Training and sampling speed of ddpmkit next to diffusers' UNet2DModel (not a unit test).

    .venv/bin/python benchmarks/bench_speed.py [--compile] [--out benchmarks/results_speed.md] [--json r.json]

Runs on whatever device it finds (cuda, else cpu). Both sides use the same network, by default
the DDIM paper's CelebA-64 U-Net (78.7M parameters; `--preset demo` for the small demo model; the
script checks that the two parameter counts are equal):

- training img/s: ddpmkit through the real `Trainer.train_step` (the `ImageBatches` loader over a
  synthetic uint8 dataset held on the device, timestep/noise draws, L_simple, gradient clipping,
  the optimizer and the EMA update; bf16 autocast + channels_last + fused optimizer on CUDA, as
  the trainer does it) vs diffusers' UNet2DModel in a plain loop with the same loss, the same
  fused AdamW, clipping and EMA, on a batch already on the device;
- sampling img·steps/s: ddpmkit through the real sampling path (`ddpmkit.generate.generate`:
  DDIM sampler, `samplers.sample` loop, bf16 autocast via `eps_fn`, the model as
  `checkpoint.load_model` returns it) vs UNet2DModel + diffusers' DDIMScheduler in the same loop;
- eager and (`--compile`, or `--variants compiled`) torch.compile'd networks;
- peak memory: torch.cuda.max_memory_allocated per measurement on CUDA (n/a on CPU: the table
  footer gives the process' max RSS);
- MFU: the model FLOP/s (3x the counted forward FLOPs per training image, 1x per sampling
  image-step) against the matrix-product rate measured in the same run (bf16 8192^3 on CUDA,
  float32 1024^3 on CPU);
- on CPU also the `demo` preset's training img/s (its batch of 32) and a diffusers peer of that model.

Warm-up steps are not timed; timed regions end with torch.cuda.synchronize on CUDA. CPU defaults
are small (batch 2, 2 timed steps) so the script finishes in minutes on 2 cores: those numbers
show relative speed on this machine, not what a GPU does.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ddpmkit.settings import build_settings
from machine import cpu_model, load_average  # benchmarks/machine.py
from speed_benches import (
    DIFFUSERS_MODELS,
    SampleDdpmkit,
    SampleDiffusers,
    TrainDdpmkit,
    TrainDiffusers,
    forward_gflops,
    matmul_peak_tflops,
    measure,
)
from speed_report import Row, markdown, print_table, target_note, write_json


@dataclass
class Defaults:
    train_batch: int
    train_steps: int
    warmup: int
    sample_batch: int
    sample_steps: int
    sample_warmup: int  # DDIM steps of the untimed warm-up pass (compilation happens there)
    sample_passes: int
    demo_batch: int = 32  # the demo preset's train.batch_size
    demo_steps: int = 20
    synthetic_count: int = 2048


CUDA_DEFAULTS = Defaults(
    train_batch=128, train_steps=30, warmup=10, sample_batch=256, sample_steps=20, sample_warmup=2, sample_passes=3
)
# A celeba64 training step at batch 2 takes ~16 s on a loaded 2-core Xeon (48 GFLOP per image
# forward), so the CPU run stays at a few steps to finish in minutes.
CPU_DEFAULTS = Defaults(
    train_batch=2, train_steps=2, warmup=1, sample_batch=2, sample_steps=2, sample_warmup=1, sample_passes=2,
    synthetic_count=256,
)


@dataclass
class Plan:
    """What one run measures, every default resolved."""

    device: torch.device
    preset: str
    variants: list[bool]  # compile off / on
    train_batch: int
    train_steps: int
    warmup: int
    sample_batch: int
    sample_steps: int
    sample_warmup: int
    sample_passes: int
    synthetic_count: int
    demo: bool
    demo_batch: int
    demo_steps: int
    interleave: bool


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, nproc {os.cpu_count()}, torch threads {torch.get_num_threads()}"


def max_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu or cuda")
    ap.add_argument("--preset", default="celeba64", choices=sorted(DIFFUSERS_MODELS), help="the network both sides run (default celeba64)")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile'd networks (= --variants both)")
    ap.add_argument("--variants", choices=("eager", "compiled", "both"), help="eager, compiled or both (default eager)")
    ap.add_argument("--train-batch", type=int, help="training batch (default 128 CUDA / 2 CPU)")
    ap.add_argument("--train-steps", type=int, help="timed training steps (default 30 CUDA / 2 CPU)")
    ap.add_argument("--warmup", type=int, help="untimed training steps first (default 10 CUDA / 1 CPU)")
    ap.add_argument("--sample-batch", type=int, help="sampling batch (default 256 CUDA / 2 CPU)")
    ap.add_argument("--sample-steps", type=int, help="DDIM steps per timed sampling pass (default 20 CUDA / 2 CPU)")
    ap.add_argument("--sample-passes", type=int, help="timed sampling passes (default 3 CUDA / 2 CPU)")
    ap.add_argument("--demo", action=argparse.BooleanOptionalAction, default=None, help="the demo preset's training img/s (default: on CPU)")
    ap.add_argument("--demo-steps", type=int, help="timed demo steps at batch 32, after 1 untimed (default 20)")
    ap.add_argument(
        "--interleave",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="alternate the two sides' timed steps (default on CPU, where other jobs share the cores; off on CUDA, "
        "where each side runs alone so its peak memory is its own)",
    )
    ap.add_argument("--out", type=Path, help="write the results as Markdown to this file")
    ap.add_argument("--json", type=Path, help="write the results as JSON to this file")
    return ap.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda asked for, but this machine has no CUDA GPU")
    cuda = device.type == "cuda"
    d = CUDA_DEFAULTS if cuda else CPU_DEFAULTS
    variants = args.variants or ("both" if args.compile else "eager")
    return Plan(
        device=device,
        preset=args.preset,
        variants={"eager": [False], "compiled": [True], "both": [False, True]}[variants],
        train_batch=args.train_batch or d.train_batch,
        train_steps=args.train_steps or d.train_steps,
        warmup=d.warmup if args.warmup is None else args.warmup,
        sample_batch=args.sample_batch or d.sample_batch,
        sample_steps=args.sample_steps or d.sample_steps,
        sample_warmup=d.sample_warmup,
        sample_passes=args.sample_passes or d.sample_passes,
        synthetic_count=d.synthetic_count,
        demo=(not cuda) if args.demo is None else args.demo,
        demo_batch=d.demo_batch,
        demo_steps=args.demo_steps or d.demo_steps,
        interleave=(not cuda) if args.interleave is None else args.interleave,
    )


def _mem_note(p: Plan) -> str:
    return "torch.cuda.max_memory_allocated" if p.device.type == "cuda" and not p.interleave else "n/a: see the process max RSS below"


def bench_training(p: Plan, comp: bool) -> tuple[list[Row], tuple[int, int]]:
    """Training img/s and peak memory of both sides; also their parameter counts."""
    tag = "compiled" if comp else "eager"
    print(f"training ({tag}): ddpmkit and diffusers ...", flush=True)
    (k_ips, k_mem, k_n), (f_ips, f_mem, f_n) = measure(
        [
            lambda: TrainDdpmkit(p.preset, p.device, p.train_batch, p.synthetic_count, comp, p.warmup),
            lambda: TrainDiffusers(p.preset, p.device, p.train_batch, comp, p.warmup),
        ],
        p.train_steps,
        p.device,
        p.interleave,
    )
    rows = [
        Row(f"training ({tag})", "img/s", k_ips, f_ips, f"{p.preset}, batch {p.train_batch}, {p.train_steps} timed steps after {p.warmup}"),
        Row(f"training peak memory ({tag})", "GiB", k_mem, f_mem, _mem_note(p)),
    ]
    return rows, (k_n, f_n)


def bench_sampling(p: Plan, comp: bool) -> list[Row]:
    tag = "compiled" if comp else "eager"
    print(f"sampling ({tag}): ddpmkit and diffusers ...", flush=True)
    args = (p.preset, p.device, p.sample_batch, p.sample_steps, p.sample_warmup, comp)
    (k_sps, k_mem, _), (f_sps, f_mem, _) = measure(
        [lambda: SampleDdpmkit(*args), lambda: SampleDiffusers(*args)], p.sample_passes, p.device, p.interleave
    )
    setting = (f"{p.preset} DDIM, batch {p.sample_batch}, {p.sample_passes} timed passes of {p.sample_steps} steps "
               f"after a {p.sample_warmup}-step pass")
    return [
        Row(f"sampling ({tag})", "img·steps/s", k_sps, f_sps, setting),
        Row(f"sampling peak memory ({tag})", "GiB", k_mem, f_mem, _mem_note(p)),
    ]


def bench_demo(p: Plan) -> tuple[Row, str]:
    """The demo preset's training img/s (CPU default), and what its length (a time budget) holds at that rate."""
    print("demo preset training: ddpmkit and a diffusers peer ...", flush=True)
    (k_ips, _, k_n), (f_ips, _, f_n) = measure(
        [
            lambda: TrainDdpmkit("demo", p.device, p.demo_batch, p.synthetic_count, False, 1),
            lambda: TrainDiffusers("demo", p.device, p.demo_batch, False, 1),
        ],
        p.demo_steps,
        p.device,
        p.interleave,
    )
    same = "equal" if k_n == f_n else "DIFFERENT"
    threads = f", {torch.get_num_threads()} threads" if p.device.type != "cuda" else ""
    row = Row("demo preset training (eager)", "img/s", k_ips, f_ips,
              f"demo 32x32, {k_n / 1e6:.3f}M params ({same}), batch {p.demo_batch}{threads}, {p.demo_steps} timed steps after 1")
    demo_s = build_settings(preset="demo").train
    if demo_s.time_budget_s is None:
        minutes = (demo_s.max_steps or 0) * demo_s.batch_size / k_ips / 60
        return row, f"the demo preset's {demo_s.max_steps or 0:,} steps take ~{minutes:,.0f} min"
    steps = demo_s.time_budget_s * k_ips / demo_s.batch_size
    return row, (f"the demo preset's budget ({demo_s.time_budget}) holds ~{steps:,.0f} steps of "
                 f"{demo_s.batch_size} (start-up and checkpoints not counted)")


def mfu_rows(rows: list[Row], gflops: float, peak_tflops: float) -> list[Row]:
    """Model FLOPs utilisation, in % of the measured matmul rate, for every training/sampling rate."""
    out = []
    for r in rows:
        per_unit = {"img/s": 3.0, "img·steps/s": 1.0}.get(r.unit)  # training = forward + 2x backward
        if per_unit is None or not r.what.startswith(("training (", "sampling (")):
            continue
        pct = [None if v is None else 100.0 * v * per_unit * gflops / (peak_tflops * 1e3) for v in (r.ddpmkit, r.diffusers)]
        kind, tag = r.what.split(" (", 1)  # "training", "eager)"
        out.append(Row(f"{kind} MFU ({tag}", "%", pct[0], pct[1],
                       f"{per_unit:g} x {gflops:.2f} GFLOP per {'image' if per_unit == 3 else 'image-step'} vs the measured matmul peak"))
    return out


def run_all(p: Plan, partial: Callable[[list[Row]], None] = lambda rows: None) -> tuple[list[Row], list[str]]:
    """Every measurement of the plan, as rows, and the notes that go under the table.

    `partial(rows)` sees the rows after each measurement, so a run stopped at a time limit still
    leaves what it measured (the GPU kit, gpukit/work_stages.py, gives the compiled variant a time limit).
    """
    rows: list[Row] = []
    gk, gf = forward_gflops(p.preset)
    peak, peak_label = matmul_peak_tflops(p.device)
    rows.append(Row("forward GFLOP per image", "GFLOP", gk, gf, f"{p.preset} model; " + ("equal" if abs(gk - gf) < 1e-6 * gk else "DIFFERENT")))
    rows.append(Row("matmul peak (measured)", "TFLOP/s", peak, None, peak_label))
    timed: list[Row] = []
    for comp in p.variants:
        got, (k_n, f_n) = bench_training(p, comp)
        if not timed:
            same = "equal" if k_n == f_n else "DIFFERENT: the comparison is unfair"
            rows.insert(0, Row("parameters", "M", k_n / 1e6, f_n / 1e6, f"{p.preset} model; {same}"))
        timed += got
        partial(rows + timed + mfu_rows(timed, gk, peak))
    for comp in p.variants:
        timed += bench_sampling(p, comp)
        partial(rows + timed + mfu_rows(timed, gk, peak))
    rows += timed + mfu_rows(timed, gk, peak)
    notes: list[str] = []
    if p.demo:
        row, length = bench_demo(p)
        rows.append(row)
        notes.append(f"At the measured demo rate {length} on this machine.")
    return rows, notes


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    p = make_plan(args)
    cuda = p.device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    started = time.time()
    print(f"device: {device_name(p.device)} | torch {torch.__version__}", flush=True)
    header = run_header(argv, p)

    def partial(rows: list[Row]) -> None:
        if args.json is not None:
            write_json(args.json, rows, header, ["PARTIAL: the run had not finished when this was written."])

    rows, notes = run_all(p, partial)
    print_table(rows, f"ddpmkit vs diffusers on {device_name(p.device)}")
    notes.insert(0, f"Process max RSS {max_rss_gib():.2f} GiB; {time.time() - started:.0f} s in all; timing "
                 + ("interleaved (the two sides' timed steps alternate)." if p.interleave else "sequential (one side at a time)."))
    if not cuda:
        notes.append("CPU numbers come from a few steps at a small batch in float32 (a celeba64 step takes tens of "
                     "seconds here); they compare the two libraries on this machine, not GPU speed. If other jobs "
                     "share the cores (see the load average), absolute rates drop; the interleaved ratio holds better.")
    notes.append(target_note(rows, p.device.type, device_name(p.device)))
    for n in notes:
        print(n)
    header["Load average (1 min) at the end"] = load_average()
    if args.out is not None or args.json is not None:
        write_outputs(args, header, rows, notes)


def run_header(argv: Optional[list[str]], p: Plan) -> dict[str, str]:
    given = argv if argv is not None else sys.argv[1:]
    cmd = " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/bench_speed.py", *given])
    return {
        "Command": f"`{cmd}`",
        "Device": f"{p.device.type}: {device_name(p.device)}",
        "Software": f"torch {torch.__version__}, diffusers {_diffusers_version()}, Python {platform.python_version()}",
        "Date": datetime.date.today().isoformat(),
        "device_type": p.device.type,
        "preset": p.preset,
    }


def write_outputs(args: argparse.Namespace, header: dict[str, str], rows: list[Row], notes: list[str]) -> None:
    notes = notes + [
        "Training: ddpmkit runs `Trainer.train_step` on batches from its `ImageBatches` loader (synthetic "
        "uint8 faces held on the device), EMA update included; diffusers runs the same loss, AdamW, "
        "clipping and a foreach EMA on a batch made once on the device. Fused AdamW, bf16 autocast and "
        "channels_last apply on CUDA only; on CPU both run in float32.",
        "Sampling: ddpmkit through `ddpmkit.generate.generate` (DDIM, `samplers.sample`, `eps_fn`), the model "
        "as `checkpoint.load_model` returns it; diffusers with `DDIMScheduler` in the equivalent loop. "
        "img·steps/s = batch x steps / seconds.",
        "MFU: model FLOP/s (training 3x the forward FLOPs per image, sampling 1x per image-step; matmuls, "
        "convolutions and attention as torch's FlopCounterMode counts them) in % of the matmul rate measured "
        "in the same run.",
    ]
    if args.out is not None:
        shown = {k: v for k, v in header.items() if k not in ("device_type", "preset")}
        args.out.write_text(markdown(rows, shown, notes))
        print(f"wrote {args.out}")
    if args.json is not None:
        write_json(args.json, rows, header, notes)
        print(f"wrote {args.json}")


def _diffusers_version() -> str:
    try:
        import diffusers

        return diffusers.__version__
    except ImportError:
        return "not installed"


if __name__ == "__main__":
    main()
