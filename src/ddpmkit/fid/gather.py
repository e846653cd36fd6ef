"""FID of images made by several processes (torchrun): each process holds the features and colour
sums of its contiguous share of the n images (`DistInfo.shard`); together they are the statistics
of all n, in index order, as one process would compute them."""

from __future__ import annotations

import numpy as np
import torch

from ddpmkit.device import DistInfo
from ddpmkit.fid.colour import ColourAccumulator, ColourStats
from ddpmkit.fid.stats import FidStats


def gathered_stats(feats: np.ndarray, colour: ColourAccumulator, n: int, dist: DistInfo) -> tuple[FidStats, ColourStats]:
    """feats: (count, 2048) of this process's share of n images; colour: its colour sums.
    Returns the FID statistics and colour statistics of all n images, on every process."""
    every = dist.gather_rows(torch.from_numpy(np.ascontiguousarray(feats)), n).numpy()
    sums = dist.all_sum(torch.from_numpy(colour.sums())).numpy()
    return FidStats.from_features(every), ColourAccumulator.from_sums(sums).result()
