"""Every path that runs on a GPU, run where mixing devices or dtypes fails, without a GPU.

The device under test is `meta` (tensors with shapes and dtypes but no data): an op that mixes
a meta tensor with a CPU tensor raises, as it would on CUDA, and so does reading a value back
(`.item()`, `float(t)`), which on a GPU is a synchronisation. meta is laxer than CUDA in places,
so every test also runs under `StrictDevice`, a dispatch mode that refuses, on the device under
test, what meta lets by:
- a CPU tensor (not a 0-dim scalar) in any op but an explicit copy or the indices of `x[idx]`
  (which CUDA accepts from the CPU): meta also accepts a CPU index in `index_select`, CUDA does not;
- a random op given a generator of another device: meta ignores the generator, CUDA raises;
- a float64 result computed from lower-precision tensors (a silent upcast: slow on GPUs, an
  error on MPS, which has no float64).
The bf16 variant runs the same paths on real CPU tensors under CPU autocast (ddpmkit.device's
bf16), which is where dtype mixing shows: matmuls, norms and in-place updates of mismatched
dtypes raise, and each interface must still hand over the dtype it promises.

On a CUDA machine the same tests also run on "cuda" (fp32 and bf16), marked `cuda`:
`pytest -m cuda tests/test_device_strict.py`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from conftest import TINY
from ddpmkit.data.loader import ImageBatches
from ddpmkit.device import autocast
from ddpmkit.diffusion import q_sample, sample_timesteps, training_loss
from ddpmkit.fid import inception
from ddpmkit.generate import eps_fn, generate
from ddpmkit.masks import builtin_mask
from ddpmkit.nn import UNet
from ddpmkit.samplers import SAMPLERS, DDPMSampler, PerImageNoise, make_sampler, sample
from ddpmkit.samplers.repaint import RePaint
from ddpmkit.schedule import NoiseSchedule, cosine_betas, linear_betas
from ddpmkit.settings import DiffusionConfig, ModelConfig, SampleConfig
from ddpmkit.train.ema import EMA

aten = torch.ops.aten
# explicit copies between devices: the only ops allowed to see both
TRANSFERS = {aten._to_copy.default, aten.copy_.default, aten._copy_from.default, aten._copy_from_and_resize.default}
# advanced indexing takes CPU index tensors on CUDA too (it copies them over)
INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
SPACINGS = ("uniform", "trailing", "leading", "quadratic")
X0_MODES = ("none", "clip", "clip_eps", "dynamic")


class DeviceMixError(RuntimeError):
    pass


class StrictDevice(TorchDispatchMode):
    """Raise when an op on `device_type` mixes in a CPU tensor or a foreign generator, or upcasts
    to float64 (see the module docstring). With device_type "cpu" only the float64 rule applies."""

    def __init__(self, device_type: str) -> None:
        super().__init__()
        self.dut = device_type

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        asked = kwargs.get("device")
        on_dut = any(t.device.type == self.dut for t in tensors) or (
            asked is not None and torch.device(asked).type == self.dut
        )
        if on_dut and self.dut != "cpu" and func not in TRANSFERS:
            checked = tensors
            if func in INDEXING:  # every argument but the indices (the second)
                checked = [a for a in tree_flatten(args[:1] + args[2:])[0] if isinstance(a, torch.Tensor)]
            cpu = [tuple(t.shape) for t in checked if t.device.type == "cpu" and t.dim() > 0]
            if cpu:
                raise DeviceMixError(f"{func} mixes CPU tensors {cpu} with {self.dut} tensors")
        gen = kwargs.get("generator")
        if on_dut and gen is not None and gen.device.type != self.dut:
            raise DeviceMixError(f"{func} on {self.dut} was given a {gen.device.type} generator")
        out = func(*args, **kwargs)
        if on_dut and func not in TRANSFERS:
            upcast = any(
                isinstance(o, torch.Tensor) and o.dtype == torch.float64 and o.dim() > 0 for o in tree_flatten(out)[0]
            )
            low = [t.dtype for t in tensors if t.is_floating_point() and t.dtype != torch.float64 and t.dim() > 0]
            if upcast and low:
                raise DeviceMixError(f"{func} silently computes float64 from {low} tensors on {self.dut}")
        return out


@dataclass(frozen=True)
class Target:
    device: torch.device
    precision: str  # ddpmkit.device.autocast's: "fp32" or "bf16"

    @property
    def real(self) -> bool:
        """Whether tensors hold values (not meta)."""
        return self.device.type != "meta"

    @contextmanager
    def strict(self) -> Iterator[None]:
        """The guard and the autocast of this target, around a whole path."""
        with StrictDevice(self.device.type), autocast(self.device, self.precision):
            yield

    def generator(self, seed: int = 0) -> torch.Generator | None:
        """A generator on the device (meta has none: the global RNG then)."""
        return None if self.device.type == "meta" else torch.Generator(self.device).manual_seed(seed)


def _targets() -> list:
    out = [pytest.param(Target(torch.device("meta"), "fp32"), id="meta"),
           pytest.param(Target(torch.device("cpu"), "bf16"), id="cpu-bf16")]
    if torch.cuda.is_available():  # a GPU machine runs the real thing too (never skipped in CI)
        out += [pytest.param(Target(torch.device("cuda"), p), id=f"cuda-{p}", marks=pytest.mark.cuda)
                for p in ("fp32", "bf16")]
    return out


@pytest.fixture(params=_targets())
def target(request) -> Target:
    return request.param


def tiny_model(**model: object) -> UNet:
    return UNet.from_config(ModelConfig(**{**TINY["model"], **model}))


def device_schedule(target: Target, T: int = 1000) -> NoiseSchedule:
    return NoiseSchedule.from_config(DiffusionConfig(timesteps=T)).to(target.device)


def check(x: torch.Tensor, target: Target, shape: tuple, dtype: torch.dtype = torch.float32) -> None:
    assert x.device.type == target.device.type and tuple(x.shape) == shape and x.dtype == dtype
    if target.real:
        assert torch.isfinite(x).all()


# ----------------------------------------------------------------------------- the guard itself


def test_the_guard_refuses_what_a_gpu_refuses():
    """Each rule fires, including where meta alone would let the op through."""
    m = torch.ones(4, device="meta")
    with StrictDevice("meta"):
        for bad in (
            lambda: m + torch.ones(4),
            lambda: m.index_select(0, torch.tensor([0, 1])),  # meta alone accepts this
            lambda: m.index_put_((torch.tensor([0]),), torch.ones(1)),  # a CPU value, not an index
            lambda: torch.randn(3, device="meta", generator=torch.Generator()),  # and this
            lambda: m * torch.ones(4, dtype=torch.float64, device="meta"),
        ):
            with pytest.raises(DeviceMixError):
                bad()
        m + torch.tensor(2.0)  # a CPU scalar is fine on CUDA too
        m[torch.tensor([0, 2])]  # and so is a CPU index
        m.to(torch.float64) + 1  # an explicit cast is not a silent one
        torch.ones(3).to("meta")  # nor is an explicit copy


def test_issue_reproduction_ddpm_on_a_device_schedule():
    """`make_sampler` on a schedule moved to the device built torch.ones(1) on the CPU."""
    s = NoiseSchedule.from_config(DiffusionConfig()).to("meta")
    with StrictDevice("meta"):
        sampler = make_sampler(s, SampleConfig(sampler="ddpm", steps=50))
    assert sampler.respaced.alphas_cumprod.device.type == "meta"


# ----------------------------------------------------------------------------- the diffusion math


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_construction_and_to(target, kind):
    T = 50
    betas = (linear_betas(T) if kind == "linear" else cosine_betas(T)).to(target.device)
    with target.strict():
        built = NoiseSchedule.from_betas(betas)
        moved = NoiseSchedule.from_betas(betas.cpu() if target.real else linear_betas(T)).to(target.device)
        respaced = NoiseSchedule.from_alphas_cumprod(built.alphas_cumprod[torch.arange(0, T, 7, device=target.device)])
    for s in (built, moved, respaced):
        for name, value in vars(s).items():
            assert value.device.type == target.device.type, name
            assert value.dtype == torch.float64, name


@pytest.mark.parametrize("loss_weight", ["uniform", "min_snr"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_q_sample_and_training_loss(target, prediction, loss_weight):
    sched = device_schedule(target)
    model = tiny_model().to(target.device)
    x0 = torch.rand(4, 3, 16, 16, device=target.device) * 2 - 1
    with target.strict():
        t = sample_timesteps(4, sched.T, target.device, target.generator())
        noise = torch.randn(x0.shape, device=target.device, generator=target.generator(1))
        xt = q_sample(sched, x0, t, noise)
        loss = training_loss(model, sched, x0, t, noise, prediction, loss_weight)
        loss.backward()
    check(xt, target, (4, 3, 16, 16))
    check(loss, target, ())
    for p in model.parameters():
        assert p.grad is not None and p.grad.device.type == target.device.type and p.grad.dtype == torch.float32


# ----------------------------------------------------------------------------- samplers


def run_sampler(target: Target, cfg: SampleConfig, n: int = 2) -> torch.Tensor:
    sched = device_schedule(target)
    eps = lambda x, t: 0.1 * x + 0.01 * t.to(x.dtype).reshape(-1, 1, 1, 1)  # noqa: E731
    with target.strict():
        sampler = make_sampler(sched, cfg)
        return sample(eps, sampler, (n, 3, 8, 8), generator=target.generator(), device=target.device)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_every_spacing_and_step_count(target, name, spacing):
    """set_timesteps + step through the shared loop; DDPM below T steps is the respaced chain.
    1, 2 and 7 steps: a lone step, no second-order step, second-order steps and the step into 0."""
    for steps in (1, 2, 7):
        out = run_sampler(target, SampleConfig(sampler=name, steps=steps, spacing=spacing, eta=0.5))
        check(out, target, (2, 3, 8, 8))


@pytest.mark.parametrize("x0", X0_MODES)
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_every_x0_mode(target, name, x0):
    for eta in (0.0, 1.0) if name == "ddim" else (0.0,):
        out = run_sampler(target, SampleConfig(sampler=name, steps=4, x0=x0, eta=eta, variance="fixed_large"))
        check(out, target, (2, 3, 8, 8))


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_generate(target, name, prediction):
    """The network wrapped by eps_fn (autocast inside; a v-network's output turned into ε with
    the device's schedule), per-image noise moved to the device."""
    sched = device_schedule(target)
    model = tiny_model().to(target.device).eval()
    with target.strict():
        sampler = make_sampler(sched, SampleConfig(sampler=name, steps=2, eta=1.0))
        eps = eps_fn(model, target.device, target.precision, prediction=prediction, sched=sched)
        batches = list(generate(eps, sampler, 5, (3, 16, 16), seed=0, batch_size=3, device=target.device))
    assert [b.shape[0] for b in batches] == [3, 2]
    for b in batches:
        check(b, target, tuple(b.shape))
        if target.real:
            assert b.abs().max() <= 1


def test_repaint(target):
    """Inpainting on the DDPM chain: re-noising, the known region's q(x_t | x_0), the mask a
    selection on the device, per-image noise moved over; known pixels come back exactly."""
    sched = device_schedule(target)
    model = tiny_model().to(target.device).eval()
    x0 = (torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(target.device)
    fill = builtin_mask("eyes", 16, "demo")
    with target.strict():
        sampler = DDPMSampler(sched)
        sampler.set_timesteps(6)
        out = RePaint(sampler, jump=2, resample=2).inpaint(
            eps_fn(model, target.device, target.precision, prediction="eps", sched=sched), x0, fill[None, None].to(target.device),
            generator=PerImageNoise(0, 0, 3, target.device))
    check(out, target, (3, 3, 16, 16))
    if target.real:
        assert torch.equal(out[:, :, ~fill], x0[:, :, ~fill])


# ----------------------------------------------------------------------------- network and training


@pytest.mark.parametrize("scale_shift", [False, True])
def test_unet_forward_and_backward(target, scale_shift):
    # scale-shift is tried as conditioning uses it: with an attribute vector and the null embedding
    model = tiny_model(scale_shift=scale_shift, cond_dim=3 if scale_shift else 0).to(target.device)
    x = torch.randn(2, 3, 16, 16, device=target.device)
    cond = torch.randn(2, 3, device=target.device) if scale_shift else None
    drop = torch.tensor([True, False], device=target.device) if scale_shift else None
    with target.strict():
        out = model(x, torch.tensor([3, 900], device=target.device), cond, drop_cond=drop)
        out.float().square().mean().backward()
    want = torch.bfloat16 if target.precision == "bf16" else torch.float32
    check(out, target, (2, 3, 16, 16), want)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("kind", ["exponential", "power"])
def test_ema_update(target, kind):
    model = tiny_model().to(target.device)
    ema = EMA(model, decay=0.9, warmup=False, kind=kind, std=0.1)
    ema.num_updates = 5  # a power EMA's first update copies the weights; the sixth averages
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    with target.strict():
        ema.update(model)
    for p_ema, p in zip(ema.model.parameters(), model.parameters()):
        assert p_ema.device.type == target.device.type and p_ema.dtype == torch.float32
        if target.real:
            assert not torch.equal(p_ema, p)


@pytest.mark.parametrize("as_numpy", [False, True])
def test_loader_resident_gather_with_flips(target, as_numpy):
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    source = images.numpy() if as_numpy else images
    with target.strict():
        batches = ImageBatches(source, 4, device=target.device, hflip=True, seed=1)
        assert batches.resident
        got = list(batches.epoch(0))
    assert len(got) == 2
    for x in got:
        check(x, target, (4, 3, 16, 16))
        if target.real:
            assert -1 <= x.min() and x.max() <= 1


def test_training_step(target):
    """A step as the trainer assembles it: batch, t and ε, L_simple under autocast, clipped
    gradients, the optimizer, the EMA."""
    sched = device_schedule(target)
    model = tiny_model().to(target.device)
    ema = EMA(model, decay=0.99)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batches = ImageBatches(images, 4, device=target.device, hflip=True)
    gen = target.generator()
    with target.strict():
        for x0 in batches.epoch(0):
            t = sample_timesteps(x0.shape[0], sched.T, target.device, gen)
            noise = torch.randn(x0.shape, device=target.device, generator=gen)
            loss = training_loss(model, sched, x0, t, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            ema.update(model)
    check(loss.detach(), target, ())
    for p in list(model.parameters()) + list(ema.model.parameters()):
        assert p.device.type == target.device.type and p.dtype == torch.float32


# ----------------------------------------------------------------------------- FID preprocessing


class _TinyInception(torch.nn.Module):
    """Stands in for the Inception network (whose weights CI may not have), with pytorch-fid's
    own forward, so its resize to 299 and [0, 1] -> [-1, 1] run as in a real FID."""

    resize_input = True
    normalize_input = True
    output_blocks = [0]
    last_needed_block = 0

    def __init__(self) -> None:
        super().__init__()
        block = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=8), torch.nn.AdaptiveAvgPool2d(1))
        self.blocks = torch.nn.ModuleList([block])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        from pytorch_fid.inception import InceptionV3

        return InceptionV3.forward(self, x)


def test_fid_preprocessing(target):
    net = _TinyInception().to(target.device).eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8).to(target.device)
    with target.strict(), torch.no_grad():
        x = inception.to_unit_float(images)
        feats = net(x)[0]
        resized = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    check(x, target, (2, 3, 32, 32))
    check(feats.float(), target, (2, 4, 1, 1))
    if target.real:
        assert 0 <= x.min() and x.max() <= 1 and np.isfinite(resized.float().cpu().numpy()).all()
