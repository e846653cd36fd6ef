"""What torch.compile costs and gains for one preset's training: compile time, img/s after it, beside
eager, and after how much training it has paid for itself (not a unit test).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_compile.py --preset celeba32 --device cpu \\
        [--steps 20] [--batch 64] [--json compile_cpu.json]

Both sides run ddpmkit's `Trainer.train_step` on its loader, as bench_speed.py does: eager first
(one untimed step, then --steps timed), then compiled (its first step, compiling, timed alone, then
one untimed step, then --steps timed). The compiled side runs in this process with Inductor's cache
in a fresh temporary folder (`--cache-dir` to reuse one: run twice to see a warm cache's first step).

The verdict compares compiling's cost (first step minus a compiled step) with its saving per image
over the preset's planned run (train.max_steps x batch at the eager rate): `train.compile: auto`
turns compiling on for a device only where it repays itself within such a run
(`ddpmkit/compiling.py` keeps the measurement). Worth keeping only from a machine that runs nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

from ddpmkit.compiling import INDUCTOR_CACHE_ENV
from ddpmkit.settings import build_settings
from machine import cpu_model, load_average  # benchmarks/machine.py
from speed_benches import TrainDdpmkit, refuse_fallback, sync


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="celeba32", help="the preset whose network and batch are measured (default celeba32)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--batch", type=int, help="training batch (default the preset's)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps of each side after the untimed ones (default 20)")
    ap.add_argument("--cache-dir", type=Path, help="Inductor's cache (default a fresh temporary folder: a cold compile)")
    ap.add_argument("--json", type=Path, help="write the result here")
    return ap.parse_args(argv)


def timed(bench: TrainDdpmkit, steps: int, device: torch.device) -> float:
    """Seconds per step over `steps` steps."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        bench.step()
    sync(device)
    return (time.perf_counter() - t0) / steps


def measure(preset: str, device: torch.device, batch: int, steps: int) -> dict[str, Any]:
    eager = TrainDdpmkit(preset, device, batch, max(batch, 256), False, warmup=1)
    try:
        eager.warm()
        eager_s = timed(eager, steps, device)
    finally:
        eager.close()
    print(f"eager: {batch / eager_s:,.2f} img/s", flush=True)
    compiled = TrainDdpmkit(preset, device, batch, max(batch, 256), True, warmup=1)
    try:
        first_s = timed(compiled, 1, device)  # Inductor compiles the forward and the backward here
        refuse_fallback(compiled.t.stepper.net)
        print(f"compiled: first step {first_s:,.1f} s", flush=True)
        compiled.step()
        compiled_s = timed(compiled, steps, device)
    finally:
        compiled.close()
    print(f"compiled: {batch / compiled_s:,.2f} img/s", flush=True)
    return {"eager_s_per_step": eager_s, "compiled_s_per_step": compiled_s, "first_compiled_step_s": first_s,
            "eager_img_per_s": batch / eager_s, "compiled_img_per_s": batch / compiled_s, "speedup": eager_s / compiled_s,
            "compile_cost_s": first_s - compiled_s}


def verdict(r: dict[str, Any], planned_steps: Optional[int]) -> str:
    """When compiling repays itself, against the preset's planned run."""
    saved = r["eager_s_per_step"] - r["compiled_s_per_step"]
    if saved <= 0:
        return f"compiling never repays itself here: compiled steps are not faster ({r['speedup']:.3f}x)"
    steps = r["compile_cost_s"] / saved
    line = f"compiling repays itself after {steps:,.0f} steps ({steps * r['eager_s_per_step'] / 60:,.1f} min of eager training)"
    if planned_steps:
        verdict_word = "within" if steps <= planned_steps else "not within"
        line += f", {verdict_word} the preset's planned {planned_steps:,} steps"
    return line


def main(argv: Optional[list[str]] = None) -> int:
    a = parse_args(argv)
    device = torch.device(a.device)
    settings = build_settings(preset=a.preset)
    batch = a.batch or settings.train.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        os.environ[INDUCTOR_CACHE_ENV] = str(a.cache_dir or Path(tmp) / "inductor")
        print(f"{a.preset} at batch {batch} on {device} ({cpu_model() if device.type == 'cpu' else torch.cuda.get_device_name(device)}, "
              f"{torch.get_num_threads()} threads); Inductor cache {os.environ[INDUCTOR_CACHE_ENV]}", flush=True)
        r = measure(a.preset, device, batch, a.steps)
    r.update(preset=a.preset, device=str(device), batch=batch, steps=a.steps, torch=torch.__version__,
             threads=torch.get_num_threads(), load=load_average(), cache="given" if a.cache_dir else "cold")
    r["verdict"] = verdict(r, settings.train.max_steps)
    print(f"compile {r['compile_cost_s']:,.1f} s for {r['speedup']:.3f}x; {r['verdict']}", flush=True)
    if a.json is not None:
        a.json.write_text(json.dumps(r, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
