"""Throughput of `prepare` on N real CelebA images from ../shared/celeba (not a unit test).

    .venv/bin/python benchmarks/bench_prepare.py --n 10000 --size 64 --crop ddim --workers 0

Builds a temporary official-layout root of symlinks to the first N images, prepares it into a
temporary cache (always a fresh build) and prints images/s. The first run may read the JPEGs
from disk; later runs measure decoding with a warm page cache.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from ddpmkit.data.prepare import prepare_dataset, resolve_workers
from ddpmkit.settings import DataConfig
from machine import cpu_model, load_average  # benchmarks/machine.py

SHARED = Path(__file__).resolve().parents[2] / "shared" / "celeba"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--crop", default="ddim", choices=["ddim", "center140", "full"])
    ap.add_argument("--workers", type=int, default=0, help="0 = all cores")
    ap.add_argument("--repeat", type=int, default=2, help="runs; the best is reported")
    args = ap.parse_args()

    names = sorted(p.name for p in (SHARED / "img_align_celeba").glob("*.jpg"))[: args.n]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "celeba"
        (root / "img_align_celeba").mkdir(parents=True)
        for n in names:
            (root / "img_align_celeba" / n).symlink_to(SHARED / "img_align_celeba" / n)
        for f in ("list_eval_partition.txt", "list_attr_celeba_000001-020000.txt"):
            (root / f).symlink_to(SHARED / f)
        cfg = DataConfig(dataset="celeba", root=root, cache_dir=Path(tmp) / "cache", size=args.size,
                         crop=args.crop, split="all", workers=args.workers)
        rates = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            res = prepare_dataset(cfg, force=True, show_progress=False)
            total = time.perf_counter() - t
            rates.append(res.counts["images_per_second"])
            print(f"{res.counts['ok']} images, decode loop {res.counts['seconds']:.2f} s "
                  f"({res.counts['images_per_second']:,.0f} img/s), whole prepare {total:.2f} s "
                  f"({len(names) / total:,.0f} img/s incl. listing and metadata)")
    print(f"best: {max(rates):,.0f} img/s | size {args.size} crop {args.crop} workers "
          f"{resolve_workers(args.workers)} | nproc {os.cpu_count()} | CPU {cpu_model()} | "
          f"load avg {load_average()}")


if __name__ == "__main__":
    main()
