"""FID during training: a small sample count from a fast sampler, logged next to the loss.

How the trainer uses it (every `fid.every` steps, on the main process):

    monitor = FidMonitor.for_settings(settings, device)          # once, before the loop
    ...
    if settings.fid.every and step % settings.fid.every == 0:
        cfg = settings.sample.model_copy(update={"sampler": settings.fid.every_sampler,
                                                 "steps": settings.fid.every_steps})
        images = generate(ema_model, settings, settings.fid.every_n, seed=0,
                          batch_size=settings.sample.batch_size, device=device, sample_cfg=cfg)
        logger.log({"step": step, "fid": monitor(to_uint8(x) for x in images)})

A fixed seed keeps the generated noise the same at every evaluation, so the curve shows the
model changing, not the noise. With few images FID is biased upwards: compare runs at equal n.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import torch
from torch import Tensor

from ddpmkit.fid.extractor import FidExtractor
from ddpmkit.fid.sources import default_reference
from ddpmkit.fid.stats import FidStats, frechet_distance


class FidMonitor:
    """FID of up to `n` uint8 images (B, 3, H, W) against fixed reference statistics."""

    def __init__(
        self,
        ref_stats: FidStats | Path,
        weights: Optional[Path],
        n: int,
        device: torch.device | str = "cpu",
        batch_size: int = 50,
    ) -> None:
        self.ref = ref_stats if isinstance(ref_stats, FidStats) else FidStats.load(Path(ref_stats))
        self.extractor = FidExtractor(weights, device, batch_size)
        self.n = n

    def __call__(self, images_uint8: Iterable[Tensor]) -> float:
        return frechet_distance(self.extractor.stats(images_uint8, limit=self.n), self.ref)

    @classmethod
    def for_settings(cls, settings, device: torch.device | str = "cpu") -> "FidMonitor":  # settings: Settings
        """Reference: the prepared split (fid.ref_split or data.split), its stats cached under
        data.cache_dir/fid; for the generated demo faces, fid.ref_n (default 2048) of them."""
        f = settings.fid
        extractor = FidExtractor(f.weights, device, f.batch_size, f.verify_weights)
        source = default_reference(settings.data, f.ref_split or settings.data.split, f.ref_n)
        ref, _, _ = extractor.source_stats(source, Path(settings.data.cache_dir) / "fid")
        monitor = cls.__new__(cls)
        monitor.ref, monitor.extractor, monitor.n = ref, extractor, f.every_n
        return monitor
