"""`torchrun --nproc-per-node N -m ddpmkit sample|fid ...`: one command, N processes, one GPU each.

Each process makes its contiguous share of the image indices (`DistInfo.shard`); every image draws
its noise from its own generator seeded by (seed, index), so the images are the ones a single
process makes. Process 0 speaks (messages, progress, tables); the others are quiet. Without
torchrun this is one process and changes nothing.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

from ddpmkit.cli.common import console, out
from ddpmkit.device import DistInfo, dist_from_env


@contextlib.contextmanager
def processes(device: Optional[str]) -> Iterator[tuple[DistInfo, torch.device]]:
    """(this process's place, its device) for the command; joins the process group under torchrun
    and leaves it at the end. `device`: the asked device name (auto, cuda, cpu, ...)."""
    dist = dist_from_env()
    dev = dist.device(device or "auto")
    was_joined = dist.joined()
    dist.join(dev)
    quiet = console.quiet, out.quiet
    if not dist.is_main:
        console.quiet = out.quiet = True
    try:
        yield dist, dev
    finally:
        console.quiet, out.quiet = quiet
        if not was_joined:
            dist.leave()
