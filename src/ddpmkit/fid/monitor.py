"""FID during training: a small sample count from a fast sampler, logged next to the loss.

How a trainer uses it (every `fid.every` steps, on the main process):

    f = settings.fid                                                       # once, before the loop
    extractor = FidExtractor(f.weights, device, f.batch_size, f.verify_weights)
    reference = default_reference(settings.data, f.ref_split or settings.data.split, f.ref_n)
    monitor = FidMonitor.for_reference(reference, extractor, f.every_n, settings.data.cache_dir / "fid")
    ...
    samples = ...  # batches of f.every_n EMA samples (B, 3, H, W) in [-1, 1], fixed seed
    logger.log({"step": step, "fid": monitor(to_uint8(x) for x in samples)})  # ddpmkit.images
    monitor.last_colour                   # ColourStats of those samples; monitor.reference_colour: the data's
    monitor.last_kid                      # their KID (kid.Kid) against the reference, beside the FID

A fixed seed keeps the generated noise the same at every evaluation, so the curve shows the
model changing, not the noise. With few images FID is biased upwards: compare runs at equal n
(KID is not, but its spread over subsets is wide at a few hundred images).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from torch import Tensor

from ddpmkit.fid.colour import ColourAccumulator, ColourStats, source_colour
from ddpmkit.fid.extractor import FidExtractor
from ddpmkit.fid.kid import Kid, kid_of
from ddpmkit.fid.sources import ImageSource
from ddpmkit.fid.stats import FidStats, frechet_distance


class FidMonitor:
    """FID of up to `n` uint8 images (B, 3, H, W) against fixed reference statistics; each call
    also leaves the colour statistics of the images it measured in `last_colour` and their KID
    in `last_kid` (None when the reference came without its features)."""

    def __init__(
        self, reference: FidStats, extractor: FidExtractor, n: int, reference_colour: Optional[ColourStats] = None
    ) -> None:
        self.reference = reference
        self.reference_colour = reference_colour
        self.extractor = extractor
        self.n = n
        self.last_colour: Optional[ColourStats] = None
        self.last_kid: Optional[Kid] = None

    def __call__(self, images_uint8: Iterable[Tensor]) -> float:
        acc = ColourAccumulator()
        stats = self.extractor.stats(acc.tap(images_uint8, self.n))
        self.last_colour = acc.result() if acc.values else None
        self.last_kid = kid_of(stats, self.reference)
        return frechet_distance(stats, self.reference)

    @classmethod
    def for_reference(
        cls,
        source: ImageSource,
        extractor: FidExtractor,
        n: int,
        stats_dir: Optional[Path] = None,
    ) -> "FidMonitor":
        """A monitor against the statistics of `source` (FID, KID and colour), computed now (or read from `stats_dir`)."""
        reference, _, _ = extractor.source_stats(source, stats_dir)
        colour, _, _ = source_colour(source, stats_dir)
        return cls(reference, extractor, n, colour)
