"""--seed semantics: image i of seed s is one image, whatever the batch size, n or the split of
the run, for every sampler (the stochastic ones' per-step noise included)."""

from __future__ import annotations

import itertools

import pytest
import torch

from ddpmkit.generate import generate
from ddpmkit.samplers import PerImageNoise, image_seed, make_sampler
from ddpmkit.schedule import NoiseSchedule, linear_betas
from ddpmkit.settings import SampleConfig

SHAPE = (3, 8, 8)
T = 100


def stand_in_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Depends on x and t element by element, so image i's path depends on image i's noise only."""
    tt = t.to(x.dtype).reshape(-1, 1, 1, 1)
    return 0.5 * torch.sin(x) * (tt + 1) / T + 0.1 * x


def images(sampler_cfg: SampleConfig, n: int, batch_size: int, seed: int = 3, first: int = 0) -> torch.Tensor:
    sampler = make_sampler(NoiseSchedule.from_betas(linear_betas(T)), sampler_cfg)
    batches = generate(stand_in_eps, sampler, n, SHAPE, seed=seed, batch_size=batch_size,
                       device=torch.device("cpu"), first=first)
    return torch.cat(list(batches))


CONFIGS = {
    "ddpm": SampleConfig(sampler="ddpm", steps=20),
    "ddim-eta1": SampleConfig(sampler="ddim", steps=10, eta=1.0),
    "dpmsolver++": SampleConfig(sampler="dpmsolver++", steps=10),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_image_5_is_the_same_for_batch_sizes_1_3_8(name):
    cfg = CONFIGS[name]
    runs = [images(cfg, 8, b) for b in (1, 3, 8)]
    for other in runs[1:]:
        # the noise is identical; only the float arithmetic of different batch shapes may differ
        torch.testing.assert_close(other[5], runs[0][5], rtol=0, atol=1e-6)
    # and it is not the same for every image: the per-image streams differ
    assert (runs[0][5] - runs[0][4]).abs().max() > 0.1


def test_image_i_does_not_depend_on_n_or_on_how_the_run_is_split():
    cfg = CONFIGS["ddpm"]
    whole = images(cfg, 10, 4)
    torch.testing.assert_close(images(cfg, 6, 4), whole[:6], rtol=0, atol=1e-6)
    # images 4..9 drawn on their own (another process or device would pass first=4)
    torch.testing.assert_close(images(cfg, 6, 5, first=4), whole[4:], rtol=0, atol=1e-6)


def test_different_seeds_share_no_image():
    """With seed + i, seed 1's image 0 would be seed 0's image 1; a SeedSequence child is not."""
    cfg = CONFIGS["ddim-eta1"]
    a, b = images(cfg, 4, 4, seed=0), images(cfg, 4, 4, seed=1)
    for i, j in itertools.product(range(4), range(4)):
        assert (a[i] - b[j]).abs().max() > 0.1, (i, j)
    seeds = {image_seed(s, i) for s in range(-3, 50) for i in range(50)}
    assert len(seeds) == 53 * 50 and all(0 <= v < 2**63 for v in seeds)


def test_per_image_noise_rows_come_from_their_own_generators():
    batch = PerImageNoise(7, 10, 3, "cpu")
    alone = PerImageNoise(7, 11, 1, "cpu")
    first_draw = batch.randn((3, *SHAPE))
    torch.testing.assert_close(first_draw[1:2], alone.randn((1, *SHAPE)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="batch of 3"):
        batch.randn((2, *SHAPE))
