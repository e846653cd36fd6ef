"""Where the time of a training step and of a sampling step goes (not a unit test).

    .venv/bin/python benchmarks/profile_step.py [--preset celeba64] [--device auto] [--compile] [--json p.json]

A few training steps (ddpmkit's `Trainer.train_step` on its loader, as bench_speed.py runs them)
and a few sampling steps (DDIM through `generate`, the `SamplingNetwork` fast path) run under
torch.profiler. Their time is grouped into convolution (and the other matrix products),
normalisation, attention, layout changes and casts, optimizer + EMA, other element-wise work, and
idle: on CUDA the kernels' device time, idle being the step's wall time the device spent without
a kernel; on the CPU each operator's own (self) time, idle being the wall time outside operators
(Python, the profiler). Each kernel is put in the group of the first rule its name, its
operator's or an enclosing one's matches (`classify`).

Then the convolution floor: every distinct convolution of the network (shape, stride, padding),
timed alone in the step's dtype and layout (forward, input gradient, weight gradient), times how
often it occurs: what a step's convolutions cost at best, without anything around them.

CPU defaults are tiny (the demo preset, batch 2) so that the script finishes in a minute; CUDA
defaults are celeba64 at batch 128 (training) and 256 (sampling). tests/test_profile_step.py runs
a tiny version.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

from speed_benches import SampleDdpmkit, TrainDdpmkit, sync  # benchmarks/speed_benches.py

GROUPS = ("convolution", "normalisation", "attention", "layout and casts", "optimizer + EMA", "other elementwise")
# (group, name fragments), tried in order on the names of a kernel, its operator and the enclosing
# ones: the optimizer and attention first, so that their copies and matmuls count as theirs
RULES = (
    ("optimizer + EMA", ("optimizer.step", "adam", "ema.update", "clip_grad", "_foreach_")),
    ("attention", ("scaled_dot_product", "attention", "flash", "fmha", "softmax")),
    ("normalisation", ("group_norm", "groupnorm", "layer_norm", "welford", "rowwisemoments", "var_mean")),
    ("convolution", ("conv", "cudnn", "xmma", "implicit_gemm", "wgrad", "dgrad", "fprop", "winograd", "gemm",
                     "aten::mm", "aten::addmm", "aten::linear", "matmul", "cutlass")),
    ("layout and casts", ("copy", "contiguous", "clone", "nchw", "nhwc", "transpose", "permute", "aten::cat",
                          "_to_copy", "convert", "aten::pad", "constant_pad")),
)


def classify(names: list[str]) -> str:
    """The group of a kernel or operator: `names` are its own name, then its operator's and the
    enclosing ones'. Inductor's fused kernels (triton_*) are element-wise or reductions, never a
    convolution, whatever operators their name lists."""
    lowered = [n.lower() for n in names]
    triton = lowered[0].startswith("triton_")
    for group, fragments in RULES:
        if triton and group == "convolution":
            continue
        if any(f in n for n in lowered for f in fragments):
            return group
    return "other elementwise"


@dataclass
class Breakdown:
    """Milliseconds per step of each group, the step's wall time and the idle part of it."""

    wall_ms: float
    groups: dict[str, float]
    idle_ms: float

    def lines(self, title: str) -> list[str]:
        out = [f"{title}: {self.wall_ms:,.2f} ms per step", f"  {'group':<20} {'ms/step':>10} {'share':>7}"]
        for name in (*GROUPS, "idle"):
            ms = self.idle_ms if name == "idle" else self.groups.get(name, 0.0)
            out.append(f"  {name:<20} {ms:>10.3f} {100 * ms / max(self.wall_ms, 1e-9):>6.1f}%")
        return out


def _chain(evt: Any) -> Iterator[str]:
    while evt is not None:
        yield evt.name
        evt = evt.cpu_parent


def breakdown(prof: profile, wall_s: float, steps: int, cuda: bool) -> Breakdown:
    """Group the profile's time: CUDA kernels by launching operator, or CPU operators' self time."""
    totals: dict[str, float] = collections.defaultdict(float)
    for evt in prof.events():
        if evt.device_type != torch.autograd.DeviceType.CPU:
            continue
        if cuda:
            for k in evt.kernels:
                totals[classify([k.name, *_chain(evt)])] += k.duration / 1e3
        else:
            totals[classify(list(_chain(evt)))] += evt.self_cpu_time_total / 1e3
    per_step = {g: v / steps for g, v in totals.items()}
    wall_ms = 1e3 * wall_s / steps
    return Breakdown(wall_ms, per_step, max(0.0, wall_ms - sum(per_step.values())))


def profiled(work: Callable[[], Any], steps: int, device: torch.device) -> tuple[profile, float]:
    """Run `work` `steps` times under the profiler; (the profile, wall seconds of the steps)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            work()
        sync(device)
        wall = time.perf_counter() - t0
    return prof, wall


def _labelled(obj: Any, attr: str, label: str) -> None:
    """Wrap obj.attr in a profiler label, so that its kernels are told apart (EMA, clipping)."""
    inner = getattr(obj, attr)

    def wrapped(*a: Any, **kw: Any) -> Any:
        with record_function(label):
            return inner(*a, **kw)

    setattr(obj, attr, wrapped)


# ------------------------------------------------------------------ the convolution floor


@dataclass(frozen=True)
class ConvShape:
    batch: int
    c_in: int
    size: tuple[int, int]
    c_out: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


def conv_shapes(model: torch.nn.Module, batch: int, shape: tuple[int, int, int]) -> collections.Counter:
    """Every Conv2d call of one forward of `model` on `batch` images of `shape`, counted (found
    with one image: a convolution's shape but for the batch does not depend on it)."""
    found: collections.Counter = collections.Counter()

    def hook(mod: torch.nn.Conv2d, inputs: tuple[torch.Tensor, ...], _: Any) -> None:
        x = inputs[0]
        found[ConvShape(batch, mod.in_channels, (x.shape[2], x.shape[3]), mod.out_channels, tuple(mod.kernel_size),
                        tuple(mod.stride), tuple(mod.padding))] += 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    p = next(model.parameters())
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape, device=p.device, dtype=p.dtype), torch.zeros(1, dtype=torch.long, device=p.device))
    finally:
        for h in handles:
            h.remove()
    return found


def time_conv(s: ConvShape, device: torch.device, dtype: torch.dtype, reps: int) -> dict[str, float]:
    """Milliseconds of one convolution of shape `s` alone: forward, input gradient, weight gradient."""
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    x = torch.randn(s.batch, s.c_in, *s.size, device=device, dtype=dtype).contiguous(memory_format=fmt)
    w = torch.randn(s.c_out, s.c_in, *s.kernel, device=device, dtype=dtype).contiguous(memory_format=fmt)
    y = F.conv2d(x, w, None, s.stride, s.padding)
    g = torch.randn_like(y).contiguous(memory_format=fmt)

    def backward(mask: list[bool]) -> Any:
        return torch.ops.aten.convolution_backward(g, x, w, None, list(s.stride), list(s.padding), [1, 1], False,
                                                   [0, 0], 1, mask)

    jobs = {"forward": lambda: F.conv2d(x, w, None, s.stride, s.padding),
            "input_grad": lambda: backward([True, False, False]), "weight_grad": lambda: backward([False, True, False])}
    out = {}
    for name, job in jobs.items():
        for _ in range(2):
            job()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            job()
        sync(device)
        out[name] = 1e3 * (time.perf_counter() - t0) / reps
    return out


def conv_floor(model: torch.nn.Module, batch: int, shape: tuple[int, int, int], device: torch.device,
               dtype: torch.dtype, reps: int, training: bool) -> dict[str, Any]:
    """Every distinct convolution timed alone, times its count: ms per training step (forward and
    both gradients) or per network call (forward only)."""
    rows, total = [], 0.0
    for s, count in conv_shapes(model, batch, shape).items():
        ms = time_conv(s, device, dtype, reps)
        per = ms["forward"] + (ms["input_grad"] + ms["weight_grad"] if training else 0.0)
        total += count * per
        rows.append({**asdict(s), "count": count, **{k: round(v, 4) for k, v in ms.items()}})
    return {"ms": total, "dtype": str(dtype).removeprefix("torch."), "shapes": rows}


# ------------------------------------------------------------------ the run


DEFAULTS = {"cuda": dict(preset="celeba64", batch=128, sample_batch=256, steps=5, sample_steps=5, reps=10),
            "cpu": dict(preset="demo", batch=2, sample_batch=2, steps=2, sample_steps=2, reps=2)}


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu or cuda")
    ap.add_argument("--preset", help="the network (default celeba64 on CUDA, demo on the CPU)")
    ap.add_argument("--batch", type=int, help="training batch (default 128 CUDA / 2 CPU)")
    ap.add_argument("--sample-batch", type=int, help="sampling batch (default 256 CUDA / 2 CPU)")
    ap.add_argument("--steps", type=int, help="profiled training steps, after one untimed (default 5 CUDA / 2 CPU)")
    ap.add_argument("--sample-steps", type=int, help="profiled DDIM steps, after one untimed (default 5 CUDA / 2 CPU)")
    ap.add_argument("--reps", type=int, help="timed repeats of each convolution alone (default 10 CUDA / 2 CPU)")
    ap.add_argument("--compile", action="store_true", help="profile the torch.compile'd networks")
    ap.add_argument("--json", type=Path, help="write everything measured here")
    args = ap.parse_args(argv)
    kind = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    for k, v in DEFAULTS[kind].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.device = torch.device(kind)
    return args


def profile_training(args: argparse.Namespace) -> tuple[Breakdown, dict[str, Any]]:
    bench = TrainDdpmkit(args.preset, args.device, args.batch, max(args.batch, 64), args.compile, warmup=1)
    try:
        st = bench.t.state
        _labelled(st.ema, "update", "ema.update")
        _labelled(torch.nn.utils, "clip_grad_norm_", "clip_grad_norm")
        bench.warm()
        prof, wall = profiled(bench.step, args.steps, args.device)
        model, s = st.model, st.settings
        shape = (s.model.in_channels, s.data.size, s.data.size)
        dtype = torch.bfloat16 if args.device.type == "cuda" else torch.float32
        floor = conv_floor(model, bench.t.stepper.micro_batch, shape, args.device, dtype, args.reps, training=True)
        return breakdown(prof, wall, args.steps, args.device.type == "cuda"), floor
    finally:
        bench.close()


def profile_sampling(args: argparse.Namespace) -> tuple[Breakdown, dict[str, Any]]:
    bench = SampleDdpmkit(args.preset, args.device, args.sample_batch, 1, 1, args.compile)
    try:
        bench.warm()
        # one profiled pass of sample_steps DDIM steps: per step = per network call
        prof, wall = profiled(lambda: bench._run(args.sample_steps), 1, args.device)
        s = bench.settings
        shape = (s.model.in_channels, s.data.size, s.data.size)
        floor = conv_floor(bench.net.net, args.sample_batch, shape, args.device, bench.net.dtype, args.reps, training=False)
        return breakdown(prof, wall, args.sample_steps, args.device.type == "cuda"), floor
    finally:
        bench.close()


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"profile: {args.preset} on {args.device}{' (compiled)' if args.compile else ''}, training batch "
          f"{args.batch}, sampling batch {args.sample_batch}", flush=True)
    result: dict[str, Any] = {"preset": args.preset, "device": str(args.device), "compiled": args.compile,
                              "batch": args.batch, "sample_batch": args.sample_batch, "torch": torch.__version__}
    if args.device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(args.device)
    for kind, run in (("train", profile_training), ("sample", profile_sampling)):
        t0 = time.perf_counter()
        parts, floor = run(args)
        result[kind] = {**asdict(parts), "conv_floor_ms": floor["ms"], "conv_floor": floor, "seconds": time.perf_counter() - t0}
        what = "training step" if kind == "train" else "sampling step (one network call)"
        for line in parts.lines(what):
            print(line, flush=True)
        conv = parts.groups.get("convolution", 0.0)
        print(f"  convolution floor {floor['ms']:.3f} ms ({len(floor['shapes'])} distinct convolutions alone, "
              f"{floor['dtype']}): the step's convolutions took {conv / max(floor['ms'], 1e-9):.2f}x that, the whole "
              f"step {parts.wall_ms / max(floor['ms'], 1e-9):.2f}x", flush=True)
        if args.json is not None:
            args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
