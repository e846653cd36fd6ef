"""Images -> Inception features -> statistics, with the network built once per extractor."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch
from torch import Tensor

from ddpmkit.fid.inception import FEATURE_SPEC, inception_features, load_inception, rebatch
from ddpmkit.fid.sources import ImageSource
from ddpmkit.fid.stats import FidStats, cached_stats
from ddpmkit.fid.weights import check_weights, resolve_weights, weights_sha256

# built networks, per (weights sha256, device): building one takes seconds, and the CLI, the
# training monitor and the tests may all ask for it in one process
_MODELS: dict[tuple[str, str], torch.nn.Module] = {}


class FidExtractor:
    """Pool3 features and their statistics for uint8 images.

    weights: the Inception file (fid.weights; None = $DDPMKIT_FID_WEIGHTS, then torch's hub cache,
    then a download: see `weights.resolve_weights`); none found raises DdpmkitError at construction.
    """

    def __init__(
        self,
        weights: Optional[Path] = None,
        device: torch.device | str = "cpu",
        batch_size: int = 50,
        verify: bool = True,
    ) -> None:
        self.path = resolve_weights(weights)
        self.sha256 = check_weights(self.path) if verify else weights_sha256(self.path)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._model: Optional[torch.nn.Module] = None

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            key = (self.sha256, str(self.device))
            if key not in _MODELS:
                _MODELS[key] = load_inception(self.path, self.device)
            self._model = _MODELS[key]
        return self._model

    def features(self, batches: Iterable[Tensor], limit: Optional[int] = None) -> np.ndarray:
        """uint8 batches (B, 3, H, W) -> (N, 2048) float64, at most `limit` images."""
        return inception_features(self.model, rebatch(batches, self.batch_size, limit), self.device)

    def stats(self, batches: Iterable[Tensor], limit: Optional[int] = None, meta: Optional[dict[str, Any]] = None) -> FidStats:
        return FidStats.from_features(self.features(batches, limit), meta)

    def identity(self, source: ImageSource) -> dict[str, Any]:
        """What decides a source's statistics: the source itself, the network and the preprocessing."""
        return {"source": source.identity, "weights_sha256": self.sha256, "features": FEATURE_SPEC}

    def source_stats(self, source: ImageSource, cache_dir: Optional[Path] = None) -> tuple[FidStats, Optional[Path], bool]:
        """Statistics of an image source; stored under `cache_dir` (and reused) when given.

        Returns (stats, cache file or None, whether it was reused).
        """
        identity = self.identity(source)

        def compute() -> FidStats:
            return self.stats(source.read(self.batch_size), meta={"label": source.label, **identity})

        if cache_dir is None:
            return compute(), None, False
        return cached_stats(Path(cache_dir), source.label, identity, compute)
