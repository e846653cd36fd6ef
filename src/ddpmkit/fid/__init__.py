"""FID (Heusel et al. 2017) and KID (Bińkowski et al. 2018) with pytorch-fid's Inception-v3 pool3 features.

    ex = FidExtractor(weights=None, device="cpu")          # fid.weights / $DDPMKIT_FID_WEIGHTS / torch hub cache
    a = ex.stats(uint8_batches)                            # FidStats(mu, sigma, count)
    b, path, reused = ex.source_stats(folder_source(dir), cache_dir)
    frechet_distance(a, b)
    kid_of(a, b)                                           # Kid(mean, std, ...) from a.features, b.features
    colour_stats(uint8_batches), source_colour(source, cache_dir)   # per-channel mean/std, saturated

Generated images (B, 3, H, W) in [-1, 1] become uint8 with `ddpmkit.images.to_uint8`.
"""

from __future__ import annotations

from ddpmkit.fid.colour import ColourAccumulator, ColourStats, colour_stats, source_colour
from ddpmkit.fid.extractor import FidExtractor
from ddpmkit.fid.kid import Kid, kernel_inception_distance, kid_of
from ddpmkit.fid.gather import gathered_stats
from ddpmkit.fid.monitor import FidMonitor
from ddpmkit.fid.sources import (
    ImageSource,
    cache_source,
    default_reference,
    find_prepared_cache,
    folder_source,
    is_image_folder,
    is_prepared_cache,
    synthetic_source,
)
from ddpmkit.fid.stats import FidStats, cached_stats, frechet_distance
from ddpmkit.fid.weights import hub_weights_path, resolve_weights

__all__ = [
    "ColourAccumulator", "ColourStats", "colour_stats", "source_colour",
    "FidExtractor", "FidMonitor", "FidStats", "Kid", "kernel_inception_distance", "kid_of", "ImageSource",
    "cache_source", "cached_stats", "default_reference", "find_prepared_cache", "folder_source", "frechet_distance",
    "gathered_stats", "hub_weights_path", "is_image_folder", "is_prepared_cache", "resolve_weights", "synthetic_source",
]
