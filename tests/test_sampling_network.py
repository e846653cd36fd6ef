"""The fast sampling path: the network cast once to the sampling dtype (no autocast per call).

On the CPU it runs in bf16 when asked: its images equal the plain fp32 path's within bf16's
tolerance. The batch chosen from free memory is a plain function of the numbers, tested with
fake ones; off CUDA an unset batch is the default.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from conftest import tiny
from ddpmkit.generate import eps_fn, generate
from ddpmkit.nn import UNet
from ddpmkit.samplers import make_sampler
from ddpmkit.sampling_network import SamplingNetwork, auto_batch_size, sampling_batch
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.settings import DEFAULT_SAMPLE_BATCH

CPU = torch.device("cpu")
GiB, MiB = 2**30, 2**20


def _setup(**sample):
    s = tiny(Path("unused"), sample={"sampler": "ddim", "steps": 10, "compile": False, **sample})
    torch.manual_seed(0)
    model = UNet.from_config(s.model).eval()
    with torch.no_grad():  # a trained-looking network: zero-initialised output layers would make ε̂ = 0
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    sched = NoiseSchedule.from_config(s.diffusion)
    return s, model, sched


def _images(net, s, sched) -> torch.Tensor:
    eps = eps_fn(net, CPU, prediction=s.diffusion.prediction, sched=sched)
    return torch.cat(list(generate(eps, make_sampler(sched, s.sample), 4, (3, 16, 16), seed=3, batch_size=2, device=CPU)))


def test_the_bf16_fast_path_draws_the_plain_paths_images_within_bf16_tolerance():
    s, model, sched = _setup(precision="bf16")
    plain = _images(model, s, sched)
    fast = SamplingNetwork(copy.deepcopy(model), CPU, s.sample)
    assert fast.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in fast.parameters())
    out = fast(torch.randn(2, 3, 16, 16), torch.tensor([5, 50]))
    assert out.dtype == torch.float32
    got = _images(fast, s, sched)
    assert not torch.equal(got, plain)  # bf16 really ran
    assert (got - plain).abs().max() < 0.02, (got - plain).abs().max()  # measured 0.005; 8 bits: 0.008
    assert (got - plain).abs().mean() < 0.003


def test_an_outer_autocast_does_not_reach_inside():
    s, model, _ = _setup(precision="bf16")
    fast = SamplingNetwork(copy.deepcopy(model), CPU, s.sample)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 50])
    with torch.autocast("cpu", dtype=torch.float16):
        inside = fast(x, t)
    assert torch.equal(inside, fast(x, t))


def test_in_fp32_the_fast_path_is_the_plain_path_exactly():
    s, model, sched = _setup()
    assert torch.equal(_images(SamplingNetwork(copy.deepcopy(model), CPU, s.sample), s, sched), _images(model, s, sched))


def test_a_sampling_copy_follows_its_source_when_refreshed():
    s, model, _ = _setup(precision="bf16")
    fast = SamplingNetwork(model, CPU, s.sample, copy_weights=True)
    assert next(model.parameters()).dtype == torch.float32  # the source is left as it was
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 50])
    before = fast(x, t)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    assert torch.equal(fast(x, t), before)
    after = fast.refresh()(x, t)
    want = SamplingNetwork(copy.deepcopy(model), CPU, s.sample)(x, t)
    assert torch.equal(after, want) and not torch.equal(after, before)


@pytest.mark.parametrize("free, per_image, n, batch", [
    (80 * GiB, 40 * MiB, 10_000, 1000),  # fits 1,024 (the cap): 10 batches of 1,000
    (80 * GiB, 40 * MiB, 100, 100),  # all at once
    (16 * GiB, 100 * MiB, 2_000, 125),  # fits 131: 16 even batches
    (1 * GiB, 2 * GiB, 50, 1),  # nothing fits: one at a time, never 0
    (10 * GiB, 10 * MiB, 1_025, 513),  # not 1,024 + 1: two batches of nearly one size
])
def test_the_batch_from_free_memory(free, per_image, n, batch):
    got = auto_batch_size(free, per_image, n)
    assert got == batch
    assert got * per_image <= max(free * 0.8, per_image) and -(-n // got) == -(-n // min(n, 1024, max(1, int(free * 0.8) // per_image)))


def test_off_cuda_an_unset_batch_is_the_default():
    s, model, _ = _setup()
    fast = SamplingNetwork(model, CPU, s.sample)
    assert fast.batch_size(None, 1000, (3, 16, 16)) == DEFAULT_SAMPLE_BATCH
    assert fast.batch_size(None, 10, (3, 16, 16)) == 10
    assert fast.batch_size(7, 1000, (3, 16, 16)) == 7
    assert sampling_batch(model, None, 1000, (3, 16, 16)) == DEFAULT_SAMPLE_BATCH


@pytest.mark.cuda
def test_the_fast_path_on_the_best_device_draws_the_plain_paths_images():
    """On CUDA: the card's auto precision, channels_last, a batch from free memory; on the CPU in CI: bf16."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    s, model, sched = _setup(precision="auto" if device.type == "cuda" else "bf16")
    model = model.to(device)
    fast = SamplingNetwork(copy.deepcopy(model), device, s.sample)
    assert fast.dtype in (torch.bfloat16, torch.float16)
    if device.type == "cuda":
        assert fast.net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert 1 <= fast.batch_size(None, 300, (3, 16, 16)) <= 300

    def images(net):
        eps = eps_fn(net, device, "fp32", prediction=s.diffusion.prediction, sched=sched.to(device))
        smp = make_sampler(sched.to(device), s.sample)
        return torch.cat(list(generate(eps, smp, 4, (3, 16, 16), seed=3, batch_size=2, device=device))).cpu()

    plain, got = images(model), images(fast)
    assert (got - plain).abs().max() < 0.03, (got - plain).abs().max()
