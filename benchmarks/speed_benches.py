"""The measured work of bench_speed.py: ddpmkit and diffusers' UNet2DModel, training and sampling.

Each side is a `Bench`: `warm()` once (untimed), then every `step()` does `work` images (training)
or image-steps (sampling). `measure` times them, sequentially (CUDA: each side alone in memory,
so its peak memory is its own) or interleaved (CPU shared with other jobs).

The ddpmkit sides go through the library's own paths (`Trainer.train_step` on its loader,
`generate.generate` on a model as `checkpoint.load_model` returns it); `make_trainer`,
`SampleDdpmkit.__init__` and `SampleDdpmkit._run` are the only places that touch those
application internals, so a refactor of the trainer or of generate.py changes only them.
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from ddpmkit.compiling import Compiled
from ddpmkit.device import autocast
from ddpmkit.diffusion import training_loss
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.settings import Settings, build_settings

# diffusers' UNet2DModel as the DDIM CelebA-64 model and as ddpmkit's demo model; attention only
# at one level (index attn), one head (attention_head_dim=None: head dim = channels, like DDPM).
DIFFUSERS_MODELS: dict[str, dict[str, Any]] = {
    "celeba64": dict(size=64, channels=(128, 256, 256, 256, 512), layers=2, attn=2, groups=32, dropout=0.1),
    "demo": dict(size=32, channels=(16, 32, 64), layers=1, attn=2, groups=8, dropout=0.0),
}
# ------------------------------------------------------------------ timing and memory


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
                "max_steps": 10**6,  # the benchmark's loop decides when to stop; a preset may leave this unset
                "tensorboard": False,
                "sample_every": 0,
                "optimizer": "adamw",  # the anchor's fused AdamW (weight decay 0: the same cost as Adam)
            },
        },
    )


def make_trainer(settings: Settings):
    """A Trainer set up as `train()` sets it up (loader, model, EMA, optimizer, DDP/compile), its
    run directory created; the benchmark's loop replaces run()'s bookkeeping."""
    from ddpmkit.train import build_trainer

    t = build_trainer(settings, log=lambda m: None, progress=False)
    t.open(resume=False)
    return t


def batches_forever(t) -> Iterator[torch.Tensor]:
    epoch = 0
    while True:
        yield from t.batches.epoch(epoch)
        epoch += 1


# ------------------------------------------------------------------ the measured work


def refuse_fallback(net: Any) -> None:
    """A compiled ddpmkit network that fell back to eager would be timed as compiled: stop instead."""
    if isinstance(net, Compiled) and net.failed:
        raise RuntimeError("torch.compile failed and ddpmkit fell back to eager: no compiled rate to measure")


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
        refuse_fallback(self.t.stepper.net)

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
    """ddpmkit.generate.generate with DDIM (η = 0) over `steps` steps, the preset's model as
    `checkpoint.load_model` returns it from a checkpoint of a freshly initialised run, run as the
    sampling commands run it (`SamplingNetwork`: the sampling dtype cast once, channels_last on
    CUDA, compiled when `compile`)."""

    def __init__(self, preset: str, device: torch.device, batch: int, steps: int, warm_steps: int, compile: bool) -> None:
        from ddpmkit.checkpoint import load_model
        from ddpmkit.samplers import make_sampler
        from ddpmkit.sampling_network import SamplingNetwork

        with tempfile.TemporaryDirectory() as tmp:
            t = make_trainer(bench_settings(preset, torch.device("cpu"), 8, 8, Path(tmp) / "run", False))
            t.save()
            del t
            model, self.settings, _ = load_model(Path(tmp) / "run", device)
        self.cfg = self.settings.sample.model_copy(update={"sampler": "ddim", "steps": steps, "eta": 0.0, "compile": compile})
        self.net = SamplingNetwork(model, device, self.cfg)
        self.sched = NoiseSchedule.from_config(self.settings.diffusion).to(device)
        self.make_sampler = make_sampler
        self.device, self.batch, self.steps, self.warm_steps = device, batch, steps, warm_steps
        self.work, self.n_params = batch * steps, sum(p.numel() for p in model.parameters())

    def _run(self, steps: int) -> torch.Tensor:
        from ddpmkit.generate import eps_fn, generate

        sampler = self.make_sampler(self.sched, self.cfg.model_copy(update={"steps": steps}))
        s = self.settings
        shape = (s.model.in_channels, s.data.size, s.data.size)
        eps = eps_fn(self.net, self.device, s.train.precision, prediction=s.diffusion.prediction, sched=self.sched)
        return next(generate(eps, sampler, self.batch, shape, seed=0, batch_size=self.batch, device=self.device))

    def warm(self) -> None:  # compilation happens here: the network sees the same shapes every step
        self._run(self.warm_steps)
        refuse_fallback(self.net.compiled)

    def step(self) -> torch.Tensor:
        return self._run(self.steps)

    def close(self) -> None:
        del self.net


class SampleDiffusers(Bench):
    """UNet2DModel + diffusers' DDIMScheduler (η = 0, linear β 1e-4..0.02, T = 1000) in the same loop."""

    def __init__(self, preset: str, device: torch.device, batch: int, steps: int, warm_steps: int, compile: bool) -> None:
        from diffusers import DDIMScheduler

        s = build_settings(preset=preset)
        unet = diffusers_unet(preset).to(device).eval()
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
            # said at once: a run killed at its time limit during the next side keeps this one in its log
            peak = "n/a" if out[-1][1] is None else f"{out[-1][1]:.2f} GiB"
            print(f"  side {len(out)} of {len(makers)}: {out[-1][0]:,.1f} per s, peak memory {peak}", flush=True)
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




# ------------------------------------------------------------------ arithmetic


def forward_gflops(preset: str) -> tuple[float, float]:
    """Forward GFLOP per image of (ddpmkit, diffusers) for `preset`'s model, counted on the meta device.

    torch's FlopCounterMode counts 2 FLOP per multiply-add of matmuls, convolutions and attention;
    normalisations and element-wise work are left out, as in the usual MFU arithmetic.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from ddpmkit.nn import UNet

    s = build_settings(preset=preset)
    size = s.model.image_size
    with torch.device("meta"):
        ours, theirs = UNet.from_config(s.model), diffusers_unet(preset)
        x, t = torch.zeros(1, 3, size, size), torch.zeros(1, dtype=torch.long)
    out = []
    for f in (lambda: ours(x, t), lambda: theirs(x, t).sample):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            f()
        out.append(counter.get_total_flops() / 1e9)
    return out[0], out[1]


def matmul_peak_tflops(device: torch.device) -> tuple[float, str]:
    """The measured matrix-product rate that MFU is taken against: (TFLOP/s, what was measured).

    CUDA: bf16 8192x8192x8192 products, the mean of 10 after 3 untimed (the dense bf16 rate the
    model's matmuls and convolutions run at under autocast). CPU: float32 1024^3, what the CPU
    benchmark computes in.
    """
    cuda = device.type == "cuda"
    n, dtype, reps = (8192, torch.bfloat16, 10) if cuda else (1024, torch.float32, 5)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=gen, device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    seconds = (time.perf_counter() - t0) / reps
    label = f"{'bf16' if cuda else 'float32'} {n}x{n}x{n} matmul, mean of {reps} after 3 untimed"
    return 2 * n**3 / seconds / 1e12, label
