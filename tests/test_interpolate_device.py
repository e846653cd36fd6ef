"""The interpolation paths under the device/dtype guard of test_device_strict.py: seed noise moved
to the device, slerp, DDIM inversion and decoding, with the real network (autocast inside eps_fn)."""

from __future__ import annotations

import pytest
import torch

from ddpmkit.generate import eps_fn
from ddpmkit.interpolation import decode, seed_noise
from ddpmkit.samplers.inversion import ddim_invert, invertible_ddim
from ddpmkit.samplers.slerp import slerp, slerp_path
from test_device_strict import Target, _targets, check, device_schedule, tiny_model


@pytest.fixture(params=_targets())
def target(request) -> Target:
    return request.param


def test_seed_noise_and_slerp(target):
    with target.strict():
        z0, z1 = seed_noise(3, (3, 8, 8), target.device), seed_noise(17, (3, 8, 8), target.device)
        path = slerp_path(z0, z1, 5)
        mid = slerp(z0.expand(2, -1, -1, -1), z1.expand(2, -1, -1, -1), torch.tensor([0.25, 0.75]))
    check(z0, target, (1, 3, 8, 8))
    check(path, target, (5, 3, 8, 8))
    check(mid, target, (2, 3, 8, 8))


def test_invert_and_decode_with_the_network(target):
    sched = device_schedule(target)
    model = tiny_model().to(target.device).eval()
    eps = eps_fn(model, target.device, target.precision)
    x0 = torch.rand(2, 3, 16, 16, device=target.device) * 2 - 1
    with target.strict():
        sampler = invertible_ddim(sched, 3)
        x_T = ddim_invert(eps, sampler, x0, refine=1)
        walk = slerp_path(x_T[:1], x_T[1:], 3)
        frames = decode(eps, sampler, walk, batch_size=2)
    check(x_T, target, (2, 3, 16, 16))
    check(frames, target, (3, 3, 16, 16))
