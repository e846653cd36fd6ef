"""ImageBatches: range, flips, determinism by (seed, epoch), resume and sharding; on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpmkit.data import loader as L
from ddpmkit.data.loader import ImageBatches
from ddpmkit.settings import DataConfig
from ddpmkit.train.data import load_training_images

CPU = torch.device("cpu")


def images(n=37, size=4) -> torch.Tensor:
    """Image i is filled with i (so a pixel names its source), plus a left-right ramp."""
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, size, size).clone()
    x[:, 1] = torch.arange(size, dtype=torch.uint8) * 60  # channel 1: columns 0, 60, 120, 180
    return x


def ids(batch: torch.Tensor) -> list[int]:
    return torch.round((batch[:, 0, 0, 0] + 1) * 127.5).long().tolist()


def test_range_flips_and_len():
    data = images()
    b = ImageBatches(data, 8, device=CPU, seed=1)
    assert len(b) == 4
    out = list(b.epoch(0))
    assert len(out) == 4 and all(x.shape == (8, 3, 4, 4) and x.dtype == torch.float32 for x in out)
    x = torch.cat(out)
    assert x.min() >= -1 and x.max() <= 1 and len(set(ids(x))) == 32
    u8 = torch.round((x + 1) * 127.5)
    flipped = u8[:, 1, 0, 0] == 180
    assert flipped.any() and (~flipped).any()  # some flipped, some not
    assert torch.equal(u8[flipped, 1, 0], torch.tensor([180.0, 120, 60, 0]).expand(int(flipped.sum()), 4))
    full = ImageBatches(torch.full((4, 3, 2, 2), 255, dtype=torch.uint8), 2, device=CPU, hflip=False)
    assert torch.equal(next(full.epoch(0)), torch.ones(2, 3, 2, 2))
    none = ImageBatches(data, 8, device=CPU, hflip=False)
    assert (torch.round((torch.cat(list(none.epoch(0))) + 1) * 127.5)[:, 1, 0, 0] == 0).all()


def test_determinism_and_resume():
    data = images()
    a = [x.clone() for x in ImageBatches(data, 5, device=CPU, seed=3).epoch(2)]
    b = [x.clone() for x in ImageBatches(data, 5, device=CPU, seed=3).epoch(2)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    other_epoch = list(ImageBatches(data, 5, device=CPU, seed=3).epoch(3))
    other_seed = list(ImageBatches(data, 5, device=CPU, seed=4).epoch(2))
    assert not torch.equal(a[0], other_epoch[0]) and not torch.equal(a[0], other_seed[0])
    resumed = list(ImageBatches(data, 5, device=CPU, seed=3).epoch(2, start_batch=4))
    assert len(resumed) == len(a) - 4 and all(torch.equal(p, q) for p, q in zip(a[4:], resumed))


def test_sharding_two_ranks_equals_single_process():
    data = images(40)
    single = list(ImageBatches(data, 8, device=CPU, seed=7).epoch(1))
    r0 = list(ImageBatches(data, 4, device=CPU, seed=7, rank=0, world_size=2).epoch(1))
    r1 = list(ImageBatches(data, 4, device=CPU, seed=7, rank=1, world_size=2).epoch(1))
    assert len(single) == len(r0) == len(r1) == 5
    for s, a, b in zip(single, r0, r1):
        assert torch.equal(torch.cat([a, b]), s)
    seen = sum((ids(a) + ids(b) for a, b in zip(r0, r1)), [])
    assert sorted(seen) == list(range(40))


def test_drop_last_false_and_padding():
    data = images(11)
    b = ImageBatches(data, 4, device=CPU, drop_last=False, hflip=False)
    out = list(b.epoch(0))
    assert len(b) == 3 and [len(x) for x in out] == [4, 4, 3]
    assert sorted(sum((ids(x) for x in out), [])) == list(range(11))
    r = [list(ImageBatches(data, 2, device=CPU, drop_last=False, rank=k, world_size=2, hflip=False).epoch(0)) for k in (0, 1)]
    assert len(r[0]) == len(r[1]) == 3 and len(r[0][-1]) == len(r[1][-1]) == 2  # 3 left: padded to 2+2
    with pytest.raises(ValueError):
        ImageBatches(data, 16, device=CPU)


def test_streamed_path_matches_resident(monkeypatch, tmp_path):
    data = images(30)
    np.save(tmp_path / "x.npy", data.numpy())
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    resident = ImageBatches(mm, 6, device=CPU, seed=2)
    assert resident.resident
    monkeypatch.setattr(L, "_fits_on_device", lambda nbytes, device: False)
    streamed = ImageBatches(mm, 6, device=CPU, seed=2)
    assert not streamed.resident
    for p, q in zip(resident.epoch(0), streamed.epoch(0)):
        assert torch.equal(p, q)


def test_load_training_images_synthetic():
    cfg = DataConfig(dataset="synthetic", size=16, synthetic_count=12)
    x, info = load_training_images(cfg)
    assert tuple(x.shape) == (12, 3, 16, 16) and x.dtype == torch.uint8
    assert info["dataset"] == "synthetic" and info["count"] == 12
