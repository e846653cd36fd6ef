"""Training and sampling speed of ddpmkit next to diffusers' UNet2DModel (not a unit test).

    .venv/bin/python benchmarks/bench_speed.py [--compile] [--out benchmarks/results_speed.md]

Runs on whatever device it finds (cuda, else cpu). Both sides use the DDIM paper's CelebA-64
U-Net (78.7M parameters; the script checks that the two parameter counts are equal):

- training img/s: ddpmkit through the real `Trainer.train_step` (the `ImageBatches` loader over a
  synthetic uint8 dataset held on the device, timestep/noise draws, L_simple, gradient clipping,
  the optimizer and the EMA update; bf16 autocast + channels_last + fused optimizer on CUDA, as
  the trainer does it) vs diffusers' UNet2DModel in a plain loop with the same loss, the same
  fused AdamW, clipping and EMA, on a batch already on the device;
- sampling img·steps/s: ddpmkit through the real sampling path (`ddpmkit.generate.generate`:
  DDIM sampler, `samplers.sample` loop, bf16 autocast via `eps_fn`, the model as
  `load_for_sampling` returns it) vs UNet2DModel + diffusers' DDIMScheduler in the same loop;
- peak memory: torch.cuda.max_memory_allocated per measurement on CUDA (n/a on CPU: the table
  footer gives the process' max RSS);
- on CPU also the `demo` preset's training img/s (its batch of 32) and a diffusers peer of that model.

Warm-up steps are not timed; timed regions end with torch.cuda.synchronize on CUDA. CPU defaults
are small (batch 2, 2 timed steps) so the script finishes in minutes on 2 cores: those numbers
show relative speed on this machine, not what a GPU does.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import resource
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from ddpmkit.device import autocast
from ddpmkit.diffusion import training_loss
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.settings import Settings, build_settings
from machine import cpu_model, load_average  # benchmarks/machine.py

# Targets from the issue, for an H100 (80 GB); they are printed, never asserted.
GPU_TARGET_TRAIN = 2400.0  # img/s, celeba64, batch 128, loader + EMA included
GPU_TARGET_SAMPLE = 11000.0  # img·steps/s, celeba64, batch 256, real sampling loop

# diffusers' UNet2DModel as the DDIM CelebA-64 model and as ddpmkit's demo model; attention only
# at one level (index attn), one head (attention_head_dim=None: head dim = channels, like DDPM).
DIFFUSERS_MODELS: dict[str, dict[str, Any]] = {
    "celeba64": dict(size=64, channels=(128, 256, 256, 256, 512), layers=2, attn=2, groups=32, dropout=0.1),
    "demo": dict(size=32, channels=(16, 32, 64), layers=1, attn=2, groups=8, dropout=0.0),
}


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
class Row:
    what: str
    unit: str
    ddpmkit: Optional[float] = None
    diffusers: Optional[float] = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------ machine facts


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, nproc {os.cpu_count()}, torch threads {torch.get_num_threads()}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> Optional[float]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return None


def max_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


# ------------------------------------------------------------------ the two models


def diffusers_unet(kind: str):
    """UNet2DModel shaped like ddpmkit's `kind` preset (same parameter count; checked by the caller)."""
    from diffusers import UNet2DModel

    c = DIFFUSERS_MODELS[kind]
    n = len(c["channels"])
    down = ["AttnDownBlock2D" if i == c["attn"] else "DownBlock2D" for i in range(n)]
    up = ["AttnUpBlock2D" if i == c["attn"] else "UpBlock2D" for i in reversed(range(n))]
    return UNet2DModel(
        sample_size=c["size"],
        in_channels=3,
        out_channels=3,
        block_out_channels=c["channels"],
        layers_per_block=c["layers"],
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=c["groups"],
        dropout=c["dropout"],
        attention_head_dim=None,
    )


def bench_settings(preset: str, device: torch.device, batch: int, count: int, run_dir: Path, compile: bool) -> Settings:
    """The preset's model, diffusion and optimizer, training on generated faces at the preset's size."""
    size = build_settings(preset=preset).model.image_size
    return build_settings(
        preset=preset,
        overrides={
            "data": {"dataset": "synthetic", "size": size, "synthetic_count": max(count, batch)},
            "train": {
                "batch_size": batch,
                "device": str(device),
                "compile": compile,
                "run_dir": str(run_dir),
                "warmup_steps": 0,
                "tensorboard": False,
                "sample_every": 0,
                "optimizer": "adamw",  # the anchor's fused AdamW (weight decay 0: the same cost as Adam)
            },
        },
    )


def make_trainer(settings: Settings):
    """A Trainer set up as `train()` sets it up (loader, model, EMA, optimizer, DDP/compile)."""
    from ddpmkit.train import build_trainer

    return build_trainer(settings, log=lambda m: None, progress=False)  # the loop below replaces run()


def batches_forever(t) -> Iterator[torch.Tensor]:
    epoch = 0
    while True:
        yield from t.batches.epoch(epoch)
        epoch += 1


def forward_gflops(preset: str) -> tuple[float, float]:
    """Forward GFLOP per image of (ddpmkit, diffusers) for `preset`'s model, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from ddpmkit.nn import UNet

    s = build_settings(preset=preset)
    size = s.model.image_size
    with torch.device("meta"):
        ours, theirs = UNet(s.model), diffusers_unet(preset)
        x, t = torch.zeros(1, 3, size, size), torch.zeros(1, dtype=torch.long)
    out = []
    for f in (lambda: ours(x, t), lambda: theirs(x, t).sample):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            f()
        out.append(counter.get_total_flops() / 1e9)
    return out[0], out[1]


# ------------------------------------------------------------------ the measured work


class Bench:
    """One side of a comparison: `warm()` once (untimed), then `step()` does `work` images (x steps)."""

    work: int = 1
    n_params: int = 0

    def warm(self) -> None:
        self.step()

    def step(self) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        pass


class TrainDdpmkit(Bench):
    """Trainer.train_step on its ImageBatches loader, EMA update included (the trainer's own set-up)."""

    def __init__(self, preset: str, device: torch.device, batch: int, count: int, compile: bool, warmup: int) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.t = make_trainer(bench_settings(preset, device, batch, count, Path(self._tmp.name) / "run", compile))
        self.data = batches_forever(self.t)
        self.work, self.n_params, self.warmup = batch, self.t.n_params, warmup

    def warm(self) -> None:
        for _ in range(self.warmup):
            self.step()

    def step(self) -> torch.Tensor:
        return self.t.train_step(next(self.data))

    def close(self) -> None:
        del self.t, self.data
        self._tmp.cleanup()


class TrainDiffusers(Bench):
    """UNet2DModel in a plain loop doing the trainer's work on a batch made once on the device.

    Same loss (ddpmkit.diffusion.training_loss: q_sample + MSE on ε), AdamW (fused on CUDA),
    gradient clipping at the preset's value, a foreach-lerp EMA; bf16 autocast + channels_last
    on CUDA, float32 on CPU.
    """

    def __init__(self, preset: str, device: torch.device, batch: int, compile: bool, warmup: int) -> None:
        s = build_settings(preset=preset)
        self.tc, self.device, self.batch, self.warmup = s.train, device, batch, warmup
        torch.manual_seed(0)
        unet = diffusers_unet(preset).to(device).train()
        self.cuda = device.type == "cuda"
        if self.cuda:
            unet = unet.to(memory_format=torch.channels_last)
        self.params = list(unet.parameters())
        self.ema = [p.detach().clone() for p in self.params]
        self.opt = torch.optim.AdamW(self.params, lr=self.tc.lr, weight_decay=0.0, **({"fused": True} if self.cuda else {}))
        self.net = torch.compile(unet) if compile else unet
        self.sched = NoiseSchedule.from_config(s.diffusion).to(device)
        size = s.model.image_size
        self.x0 = torch.rand(batch, 3, size, size, device=device) * 2 - 1
        if self.cuda:
            self.x0 = self.x0.contiguous(memory_format=torch.channels_last)
        self.gen = torch.Generator(device=device).manual_seed(1)
        self.work, self.n_params = batch, sum(p.numel() for p in self.params)

    def warm(self) -> None:
        for _ in range(self.warmup):
            self.step()

    def _eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t).sample

    def step(self) -> torch.Tensor:
        t = torch.randint(0, self.sched.T, (self.batch,), generator=self.gen, device=self.device)
        noise = torch.randn(self.x0.shape, generator=self.gen, device=self.device)
        if self.cuda:
            noise = noise.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.tc.precision):
            loss = training_loss(self._eps, self.sched, self.x0, t, noise)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.tc.grad_clip)
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, self.params, 1.0 - self.tc.ema_decay)
        return loss.detach()

    def close(self) -> None:
        del self.net, self.opt, self.ema, self.params


class SampleDdpmkit(Bench):
    """ddpmkit.generate.generate with DDIM (η = 0) over `steps` steps, the celeba64 model as
    `load_for_sampling` returns it from a checkpoint of a freshly initialised run."""

    def __init__(self, device: torch.device, batch: int, steps: int, warm_steps: int, compile: bool) -> None:
        from ddpmkit.generate import load_for_sampling

        with tempfile.TemporaryDirectory() as tmp:
            t = make_trainer(bench_settings("celeba64", torch.device("cpu"), 8, 8, Path(tmp) / "run", False))
            t.save()
            del t
            model, self.settings, _ = load_for_sampling(Path(tmp) / "run", device)
        self.net = torch.compile(model) if compile else model
        self.cfg = self.settings.sample.model_copy(update={"sampler": "ddim", "steps": steps, "eta": 0.0})
        self.device, self.batch, self.steps, self.warm_steps = device, batch, steps, warm_steps
        self.work, self.n_params = batch * steps, sum(p.numel() for p in model.parameters())

    def _run(self, steps: int) -> torch.Tensor:
        from ddpmkit.generate import generate

        cfg = self.cfg.model_copy(update={"steps": steps})
        return next(generate(self.net, self.settings, self.batch, seed=0, batch_size=self.batch, device=self.device, sample_cfg=cfg))

    def warm(self) -> None:  # compilation happens here: the network sees the same shapes every step
        self._run(self.warm_steps)

    def step(self) -> torch.Tensor:
        return self._run(self.steps)

    def close(self) -> None:
        del self.net


class SampleDiffusers(Bench):
    """UNet2DModel + diffusers' DDIMScheduler (η = 0, linear β 1e-4..0.02, T = 1000) in the same loop."""

    def __init__(self, device: torch.device, batch: int, steps: int, warm_steps: int, compile: bool) -> None:
        from diffusers import DDIMScheduler

        s = build_settings(preset="celeba64")
        unet = diffusers_unet("celeba64").to(device).eval()
        if device.type == "cuda":
            unet = unet.to(memory_format=torch.channels_last)
        self.net = torch.compile(unet) if compile else unet
        d = s.diffusion
        self.scheduler = DDIMScheduler(
            num_train_timesteps=d.timesteps, beta_start=d.beta_start, beta_end=d.beta_end, beta_schedule="linear", clip_sample=True
        )
        self.size = s.model.image_size
        self.device, self.batch, self.steps, self.warm_steps = device, batch, steps, warm_steps
        self.work, self.n_params = batch * steps, sum(p.numel() for p in unet.parameters())

    @torch.no_grad()
    def _run(self, steps: int) -> torch.Tensor:
        self.scheduler.set_timesteps(steps)
        gen = torch.Generator(device=self.device).manual_seed(0)
        x = torch.randn(self.batch, 3, self.size, self.size, generator=gen, device=self.device)
        for t in self.scheduler.timesteps:
            with autocast(self.device, "auto"):
                eps = self.net(x, t.to(self.device)).sample
            x = self.scheduler.step(eps.float(), t, x).prev_sample
        return x

    def warm(self) -> None:
        self._run(self.warm_steps)

    def step(self) -> torch.Tensor:
        return self._run(self.steps)

    def close(self) -> None:
        del self.net


def measure(
    makers: list[Callable[[], Bench]], rounds: int, device: torch.device, interleave: bool
) -> list[tuple[float, Optional[float], int]]:
    """(work per second, peak GiB or None, parameters) for each side.

    Sequential (CUDA): one side at a time, alone in memory, so its peak memory is its own.
    Interleaved (CPU, shared by other jobs): both sides built and warmed, then their timed steps
    alternate, so a slow spell of the machine slows both alike.
    """
    if not interleave:
        out = []
        for make in makers:
            reset_memory(device)
            b = make()
            b.warm()
            sync(device)
            t0 = time.perf_counter()
            for _ in range(rounds):
                b.step()
            sync(device)
            seconds = time.perf_counter() - t0
            out.append((rounds * b.work / seconds, peak_memory_gib(device), b.n_params))
            b.close()
            del b
        reset_memory(device)
        return out
    benches = [make() for make in makers]
    for b in benches:
        b.warm()
    seconds = [0.0] * len(benches)
    for _ in range(rounds):
        for i, b in enumerate(benches):
            sync(device)
            t0 = time.perf_counter()
            b.step()
            sync(device)
            seconds[i] += time.perf_counter() - t0
    out = [(rounds * b.work / s, None, b.n_params) for b, s in zip(benches, seconds)]
    for b in benches:
        b.close()
    reset_memory(device)
    return out


# ------------------------------------------------------------------ report


def fmt(v: Optional[float], unit: str) -> str:
    if v is None:
        return "n/a"
    if unit == "GiB":
        return f"{v:.2f}"
    if unit in ("M", "GFLOP"):
        return f"{v:.3f}"
    return f"{v:.3g}" if v < 100 else f"{v:,.0f}"


def ratio(r: Row) -> str:
    if r.ddpmkit is None or r.diffusers is None or r.unit in ("M", "GFLOP") or r.diffusers == 0:
        return ""
    return f"{r.ddpmkit / r.diffusers:.2f}x"


def print_table(rows: list[Row], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col, just in (("measurement", "left"), ("unit", "left"), ("ddpmkit", "right"), ("diffusers", "right"), ("ddpmkit/diffusers", "right"), ("setting", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(r.what, r.unit, fmt(r.ddpmkit, r.unit), fmt(r.diffusers, r.unit), ratio(r), r.note)
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def markdown(rows: list[Row], header: dict[str, str], notes: list[str]) -> str:
    lines = ["# Training and sampling speed: ddpmkit vs diffusers", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "| measurement | unit | ddpmkit | diffusers | ddpmkit/diffusers | setting |", "|---|---|--:|--:|--:|---|"]
    for r in rows:
        lines.append(f"| {r.what} | {r.unit} | {fmt(r.ddpmkit, r.unit)} | {fmt(r.diffusers, r.unit)} | {ratio(r)} | {r.note} |")
    for n in notes:
        lines += ["", n]
    lines.append("")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu or cuda")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile'd networks")
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
    args = ap.parse_args(argv)

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda asked for, but this machine has no CUDA GPU")
    cuda = device.type == "cuda"
    d = CUDA_DEFAULTS if cuda else CPU_DEFAULTS
    tb, ts = args.train_batch or d.train_batch, args.train_steps or d.train_steps
    wu = d.warmup if args.warmup is None else args.warmup
    sb, ss, sp = args.sample_batch or d.sample_batch, args.sample_steps or d.sample_steps, args.sample_passes or d.sample_passes
    demo = (not cuda) if args.demo is None else args.demo
    ds = args.demo_steps or d.demo_steps
    inter = (not cuda) if args.interleave is None else args.interleave
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    started = time.time()
    print(f"device: {device_name(device)} | torch {torch.__version__}", flush=True)
    mem_note = "torch.cuda.max_memory_allocated" if cuda and not inter else "n/a: see the process max RSS below"

    rows: list[Row] = []
    gk, gf = forward_gflops("celeba64")
    rows.append(Row("forward GFLOP per image", "GFLOP", gk, gf, "celeba64 model; " + ("equal" if abs(gk - gf) < 1e-6 * gk else "DIFFERENT")))
    variants = [False, True] if args.compile else [False]
    for comp in variants:
        tag = "compiled" if comp else "eager"
        print(f"training ({tag}): ddpmkit and diffusers ...", flush=True)
        (k_ips, k_mem, k_n), (f_ips, f_mem, f_n) = measure(
            [
                lambda: TrainDdpmkit("celeba64", device, tb, d.synthetic_count, comp, wu),
                lambda: TrainDiffusers("celeba64", device, tb, comp, wu),
            ],
            ts,
            device,
            inter,
        )
        if not comp:
            same = "equal" if k_n == f_n else "DIFFERENT: the comparison is unfair"
            rows.insert(0, Row("parameters", "M", k_n / 1e6, f_n / 1e6, f"celeba64 model; {same}"))
        rows.append(Row(f"training ({tag})", "img/s", k_ips, f_ips, f"celeba64, batch {tb}, {ts} timed steps after {wu}"))
        rows.append(Row(f"training peak memory ({tag})", "GiB", k_mem, f_mem, mem_note))
    for comp in variants:
        tag = "compiled" if comp else "eager"
        print(f"sampling ({tag}): ddpmkit and diffusers ...", flush=True)
        (k_sps, k_mem, _), (f_sps, f_mem, _) = measure(
            [
                lambda: SampleDdpmkit(device, sb, ss, d.sample_warmup, comp),
                lambda: SampleDiffusers(device, sb, ss, d.sample_warmup, comp),
            ],
            sp,
            device,
            inter,
        )
        rows.append(Row(f"sampling ({tag})", "img·steps/s", k_sps, f_sps, f"celeba64 DDIM, batch {sb}, {sp} timed passes of {ss} steps after a {d.sample_warmup}-step pass"))
        rows.append(Row(f"sampling peak memory ({tag})", "GiB", k_mem, f_mem, mem_note))
    demo_minutes: Optional[float] = None
    if demo:
        print("demo preset training: ddpmkit and a diffusers peer ...", flush=True)
        (k_ips, _, k_n), (f_ips, _, f_n) = measure(
            [
                lambda: TrainDdpmkit("demo", device, d.demo_batch, d.synthetic_count, False, 1),
                lambda: TrainDiffusers("demo", device, d.demo_batch, False, 1),
            ],
            ds,
            device,
            inter,
        )
        same = "equal" if k_n == f_n else "DIFFERENT"
        threads = f", {torch.get_num_threads()} threads" if not cuda else ""
        rows.append(Row("demo preset training (eager)", "img/s", k_ips, f_ips, f"demo 32x32, {k_n / 1e6:.3f}M params ({same}), batch {d.demo_batch}{threads}, {ds} timed steps after 1"))
        demo_s = build_settings(preset="demo").train
        demo_minutes = (demo_s.max_steps or 0) * demo_s.batch_size / k_ips / 60

    print_table(rows, f"ddpmkit vs diffusers on {device_name(device)}")
    rss = max_rss_gib()
    notes = [f"Process max RSS {rss:.2f} GiB; {time.time() - started:.0f} s in all; timing "
             + ("interleaved (the two sides' timed steps alternate)." if inter else "sequential (one side at a time).")]
    if demo_minutes is not None:
        notes.append(f"At the measured demo rate the demo preset's full run (train.max_steps x train.batch_size images) "
                     f"takes ~{demo_minutes:,.0f} min on this machine.")
    if not cuda:
        notes.append("CPU numbers come from a few steps at a small batch in float32 (a celeba64 step takes tens of "
                     "seconds here); they compare the two libraries on this machine, not GPU speed. If other jobs "
                     "share the cores (see the load average), absolute rates drop; the interleaved ratio holds better.")
    notes.append(target_note(rows, device))
    for n in notes:
        print(n)

    if args.out is not None:
        given = argv if argv is not None else sys.argv[1:]
        cmd = " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/bench_speed.py", *given])
        header = {
            "Command": f"`{cmd}`",
            "Device": f"{device.type}: {device_name(device)}",
            "Software": f"torch {torch.__version__}, diffusers {_diffusers_version()}, Python {platform.python_version()}",
            "Date": datetime.date.today().isoformat(),
            "Load average (1 min) at the end": load_average(),
        }
        notes += [
            "Training: ddpmkit runs `Trainer.train_step` on batches from its `ImageBatches` loader (synthetic "
            "uint8 faces held on the device), EMA update included; diffusers runs the same loss, AdamW, "
            "clipping and a foreach EMA on a batch made once on the device. Fused AdamW, bf16 autocast and "
            "channels_last apply on CUDA only; on CPU both run in float32.",
            "Sampling: ddpmkit through `ddpmkit.generate.generate` (DDIM, `samplers.sample`, `eps_fn`), the model "
            "as `load_for_sampling` returns it; diffusers with `DDIMScheduler` in the equivalent loop. "
            "img·steps/s = batch x steps / seconds.",
        ]
        args.out.write_text(markdown(rows, header, notes))
        print(f"wrote {args.out}")


def target_note(rows: list[Row], device: torch.device) -> str:
    """The issue's H100 targets, and whether this run can say anything about them."""
    targets = f"GPU targets (H100): training >= {GPU_TARGET_TRAIN:,.0f} img/s, sampling >= {GPU_TARGET_SAMPLE:,.0f} img·steps/s"
    if device.type != "cuda":
        return f"{targets}: NOT measured, this run had no CUDA device; the same command on a CUDA machine measures them."
    got = {r.what: r.ddpmkit for r in rows}
    train = max(v for k, v in got.items() if k.startswith("training (") and v is not None)
    samp = max(v for k, v in got.items() if k.startswith("sampling (") and v is not None)
    verdict = (f"best training {train:,.0f} img/s ({'meets' if train >= GPU_TARGET_TRAIN else 'misses'} the target), "
               f"best sampling {samp:,.0f} img·steps/s ({'meets' if samp >= GPU_TARGET_SAMPLE else 'misses'} the target)")
    return f"{targets}; on this {torch.cuda.get_device_name(device)}: {verdict}."


def _diffusers_version() -> str:
    try:
        import diffusers

        return diffusers.__version__
    except ImportError:
        return "not installed"


if __name__ == "__main__":
    main()
