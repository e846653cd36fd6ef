"""Throughput of the training batch loader (`ImageBatches`) on whatever device is found.

    .venv/bin/python benchmarks/bench_loader.py --n 50000 --size 64 --batch 128

Times whole epochs of gather + random flip + scaling to [-1, 1] from a uint8 (N, 3, S, S) array,
resident on the device (the path taken whenever the cache fits, e.g. CelebA-64 train on a GPU)
and, on CUDA, streamed from a host memory map. Not a unit test.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ddpmkit.data.loader import ImageBatches
from ddpmkit.device import resolve_device
from machine import cpu_model, load_average  # benchmarks/machine.py


def rate(images, batch: int, device: torch.device, epochs: int) -> float:
    loader = ImageBatches(images, batch, device=device, hflip=True, seed=0)
    for x in loader.epoch(0):  # warm-up
        pass
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    n = 0
    for e in range(1, epochs + 1):
        for x in loader.epoch(e):
            n += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.n, 3, args.size, args.size), dtype=np.uint8)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    print(f"{where}, load {load_average()}, torch {torch.__version__}")
    print(f"device {device}, torch threads {torch.get_num_threads()}, {args.n} images {args.size}x{args.size}, batch {args.batch}")
    print(f"resident: {rate(torch.from_numpy(images), args.batch, device, args.epochs):,.0f} images/s")
    if device.type == "cuda":
        from ddpmkit.data import loader as L

        L_fits = L._fits_on_device
        L._fits_on_device = lambda nbytes, dev: False  # force the host-streamed path
        try:
            print(f"streamed from host: {rate(images, args.batch, device, args.epochs):,.0f} images/s")
        finally:
            L._fits_on_device = L_fits


if __name__ == "__main__":
    main()
