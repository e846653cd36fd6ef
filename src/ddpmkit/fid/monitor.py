"""FID during training: a small sample count from a fast sampler, logged next to the loss.

How a trainer uses it (every `fid.every` steps, on the main process):

    f = settings.fid                                                       # once, before the loop
    extractor = FidExtractor(f.weights, device, f.batch_size, f.verify_weights)
    reference = default_reference(settings.data, f.ref_split or settings.data.split, f.ref_n)
    monitor = FidMonitor.for_reference(reference, extractor, f.every_n, settings.data.cache_dir / "fid")
    ...
    samples = ...  # batches of f.every_n EMA samples (B, 3, H, W) in [-1, 1], fixed seed
    logger.log({"step": step, "fid": monitor(to_uint8(x) for x in samples)})  # ddpmkit.images

A fixed seed keeps the generated noise the same at every evaluation, so the curve shows the
model changing, not the noise. With few images FID is biased upwards: compare runs at equal n.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from torch import Tensor

from ddpmkit.fid.extractor import FidExtractor
from ddpmkit.fid.sources import ImageSource
from ddpmkit.fid.stats import FidStats, frechet_distance


class FidMonitor:
    """FID of up to `n` uint8 images (B, 3, H, W) against fixed reference statistics."""

    def __init__(self, reference: FidStats, extractor: FidExtractor, n: int) -> None:
        self.reference = reference
        self.extractor = extractor
        self.n = n

    def __call__(self, images_uint8: Iterable[Tensor]) -> float:
        return frechet_distance(self.extractor.stats(images_uint8, limit=self.n), self.reference)

    @classmethod
    def for_reference(
        cls,
        source: ImageSource,
        extractor: FidExtractor,
        n: int,
        stats_dir: Optional[Path] = None,
    ) -> "FidMonitor":
        """A monitor against the statistics of `source`, computed now (or read from `stats_dir`)."""
        reference, _, _ = extractor.source_stats(source, stats_dir)
        return cls(reference, extractor, n)
