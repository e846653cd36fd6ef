"""Feature statistics (μ, Σ, count, and the features KID needs), the Fréchet distance, and the
on-disk stats cache.

FID = ||μ_1 - μ_2||² + Tr(Σ_1 + Σ_2 - 2 (Σ_1 Σ_2)^{1/2})   (Heusel et al. 2017).

pytorch-fid takes the trace term from scipy's general `sqrtm(Σ_1 Σ_2)`, which needs a minute for
2048x2048 on a small CPU. We use the symmetric form of the same number: Σ_1 Σ_2 is similar to
Σ_1^{1/2} Σ_2 Σ_1^{1/2}, which is symmetric positive semi-definite, so
Tr (Σ_1 Σ_2)^{1/2} = Σ_k √λ_k(Σ_1^{1/2} Σ_2 Σ_1^{1/2}) — two `eigh` calls, seconds, and well
defined for the singular Σ of N < 2048 images. tests/test_fid.py checks it against pytorch-fid.

The cache keeps, beside each statistics .npz, the features themselves as float16 .npy
(`features-<name>.npy`, 4 KB an image; a .npy holds no pickle): KID (`kid.py`) needs them, not
only μ and Σ. float16 moves a KID by far less than its spread over subsets (tests/test_kid.py),
and features in memory are float16 too, so a cached reference gives the KID a fresh one gives.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ddpmkit.errors import DdpmkitError
from ddpmkit.io_utils import atomic_path

STATS_FORMAT = 1
FEATURES_DTYPE = np.float16


@dataclass
class FidStats:
    """mu: (D,) float64; sigma: (D, D) float64; count: images used; meta: how they were made;
    features: (count, D) float16, the features themselves (for KID), None when not known."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    meta: dict[str, Any] = field(default_factory=dict)
    features: Optional[np.ndarray] = field(default=None, repr=False, compare=False)

    @classmethod
    def from_features(cls, feats: np.ndarray, meta: Optional[dict[str, Any]] = None) -> "FidStats":
        """feats: (N, D) with N >= 2. Σ is the unbiased covariance, as in pytorch-fid (np.cov)."""
        if feats.ndim != 2 or feats.shape[0] < 2:
            raise DdpmkitError(f"FID needs at least 2 images, got {feats.shape[0] if feats.ndim else 0}")
        kept = feats.astype(FEATURES_DTYPE)
        feats = feats.astype(np.float64)
        return cls(feats.mean(axis=0), np.cov(feats, rowvar=False), int(feats.shape[0]), dict(meta or {}), kept)

    def save(self, path: Path) -> None:
        """Write an .npz (mu, sigma, count, meta as JSON) atomically; no pickle."""
        meta = json.dumps({"format": STATS_FORMAT, **self.meta}, sort_keys=True)
        buf = io.BytesIO()
        np.savez(buf, mu=self.mu, sigma=self.sigma, count=np.int64(self.count), meta=np.array(meta))
        with atomic_path(path) as tmp:
            tmp.write_bytes(buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> "FidStats":
        """Read our .npz, or pytorch-fid's (mu and sigma only)."""
        try:
            with np.load(path, allow_pickle=False) as f:
                mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
                count = int(f["count"]) if "count" in f.files else 0
                meta = json.loads(str(f["meta"])) if "meta" in f.files else {}
        except (OSError, ValueError, KeyError) as e:
            raise DdpmkitError(f"{path} is not a FID statistics .npz with mu and sigma ({e})".splitlines()[0]) from e
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise DdpmkitError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit together")
        return cls(mu, sigma, count, meta)


def frechet_distance(a: FidStats, b: FidStats) -> float:
    """FID between two feature Gaussians (the module docstring explains the trace term)."""
    if a.mu.shape != b.mu.shape:
        raise DdpmkitError(f"FID statistics have different feature sizes: {a.mu.shape[0]} vs {b.mu.shape[0]}")
    diff = a.mu - b.mu
    w, v = np.linalg.eigh(a.sigma)
    sqrt_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T  # Σ_1^{1/2}; tiny negative λ are round-off
    m = sqrt_a @ b.sigma @ sqrt_a
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * tr_covmean)


def stats_key(identity: dict[str, Any]) -> str:
    """sha256 of everything that decides the statistics: source identity, N, weights, features."""
    blob = json.dumps({"format": STATS_FORMAT, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def stats_files(cache_dir: Path, label: str, key: str, prefix: str = "", suffix: str = ".npz") -> tuple[Path, list[Path]]:
    """(where statistics of `label` with `key` are written, the files to try reading first).

    The second list starts with that path and goes on to any other label's file of the same key: the
    same pixels under another cache's name (prepared again, so a new cache key) are the same statistics.
    """
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:60]
    path = Path(cache_dir) / f"{prefix}{safe}-{key[:16]}{suffix}"
    return path, [path, *sorted(Path(cache_dir).glob(f"{prefix}*-{key[:16]}{suffix}"))]


def features_file(stats_path: Path) -> Path:
    """Where the features behind a cached statistics file are: features-<its name>.npy beside it."""
    return stats_path.with_name(f"features-{stats_path.stem}.npy")


def save_features(feats: np.ndarray, path: Path) -> None:
    """Write (N, D) features as a float16 .npy, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # np.save(path) would append .npy to the temp name
        np.save(f, np.asarray(feats, dtype=FEATURES_DTYPE), allow_pickle=False)


def load_features(path: Path, stats: FidStats) -> Optional[np.ndarray]:
    """The cached features of `stats` (memory-mapped), or None if absent or not theirs in shape."""
    if not path.is_file():
        return None
    try:
        feats = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    return feats if feats.shape == (stats.count, stats.mu.shape[0]) and feats.dtype == FEATURES_DTYPE else None


def cached_stats(
    cache_dir: Path,
    label: str,
    identity: dict[str, Any],
    compute: Callable[[], FidStats],
) -> tuple[FidStats, Path, bool]:
    """Load `cache_dir/<label>-<key>.npz` and its features if present, else compute and store them.

    The key hashes `identity` (source identity, split, crop, size, N, weights sha, feature spec),
    so any change there names a different file: stale statistics are never read. Statistics
    cached without their features (before KID) are computed again, once.
    Returns (stats, path, whether it came from the cache).
    """
    key = stats_key(identity)
    path, candidates = stats_files(cache_dir, label, key)
    for found in candidates:
        if found.is_file():
            stats = FidStats.load(found)
            if stats.meta.get("key") == key:
                stats.features = load_features(features_file(found), stats)
                if stats.features is not None:
                    return stats, found, True
    stats = compute()
    stats.meta = {**stats.meta, "key": key, "identity": identity}
    if stats.features is not None:  # first: statistics on disk mean their features are there too
        save_features(stats.features, features_file(path))
    stats.save(path)
    return stats, path, False
