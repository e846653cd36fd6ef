"""Kernel Inception Distance (Bińkowski et al. 2018), beside FID.

KID is the squared maximum mean discrepancy between two sets of Inception features under the
cubic polynomial kernel k(x, y) = (x·y / d + 1)³ (d = 2048), estimated without bias on subsets:

    MMD²(X, Y) = Σ_{i≠j} k(x_i, x_j) / m(m-1) + Σ_{i≠j} k(y_i, y_j) / m(m-1) - 2 Σ_{i,j} k(x_i, y_j) / m²

for m features drawn without replacement from each side, averaged over 100 subsets of
m = min(1000, n_1, n_2): the defaults of the paper's code, clean-fid and torch-fidelity. The
mean and the standard deviation over the subsets are reported x10³. Unlike FID, the estimate
is unbiased at any sample size, so a KID of 1,000 images compares with one of 50,000 (its
spread is wider); it can be slightly negative when the two sets are alike.

Cost: per subset three m x m x d products in float64, about 1.2e12 floating-point operations
for 100 subsets of 1,000 (numpy's BLAS, on the CPU). A side used whole (m = its count) has the
same within-set term in every subset, computed once: two products a subset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ddpmkit.errors import DdpmkitError
from ddpmkit.fid.stats import FidStats

SUBSETS = 100
SUBSET_SIZE = 1000
SCALE = 1000  # KID is reported x10³
SEED = 0  # the subsets drawn: fixed, so the same features give the same KID


@dataclass(frozen=True)
class Kid:
    """mean and std of the unbiased MMD² over `subsets` subsets of `subset_size` (not scaled)."""

    mean: float
    std: float
    subsets: int
    subset_size: int

    def as_dict(self) -> dict[str, Any]:
        """The record written to the JSON result and the run log: values x10³, as printed."""
        return {"mean_x1e3": round(SCALE * self.mean, 4), "std_x1e3": round(SCALE * self.std, 4),
                "subsets": self.subsets, "subset_size": self.subset_size}

    def describe(self) -> str:
        """'12.34 ± 0.56' (x10³)."""
        return f"{SCALE * self.mean:.2f} ± {SCALE * self.std:.2f}"


def _kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(x_i · y_j / d + 1)³ for x: (m, d), y: (k, d) float64 -> (m, k)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _within(x: np.ndarray) -> float:
    """Mean of k(x_i, x_j) over i ≠ j."""
    k = _kernel(x, x)
    m = len(x)
    return float((k.sum() - np.trace(k)) / (m * (m - 1)))


def _draw(feats: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` rows without replacement, in file order (the estimate ignores order; a memory-mapped
    file reads faster forwards), as float64."""
    return np.asarray(feats[np.sort(rng.choice(len(feats), size, replace=False))], dtype=np.float64)


def kernel_inception_distance(
    a: np.ndarray, b: np.ndarray, subsets: int = SUBSETS, subset_size: int = SUBSET_SIZE, seed: int = SEED
) -> Kid:
    """KID of features a: (n_1, d) against b: (n_2, d), any float dtype, n_1, n_2 >= 2."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise DdpmkitError(f"KID needs two feature matrices of one width, got {a.shape} and {b.shape}")
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise DdpmkitError(f"KID needs at least 2 images on each side, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    whole_a = _within(np.asarray(a, dtype=np.float64)) if size == len(a) else None
    whole_b = _within(np.asarray(b, dtype=np.float64)) if size == len(b) else None
    values = np.empty(subsets)
    for s in range(subsets):
        x, y = _draw(a, size, rng), _draw(b, size, rng)
        within = (whole_a if whole_a is not None else _within(x)) + (whole_b if whole_b is not None else _within(y))
        values[s] = within - 2.0 * float(_kernel(x, y).mean())
    return Kid(float(values.mean()), float(values.std()), subsets, size)


def kid_of(a: FidStats, b: FidStats) -> Optional[Kid]:
    """KID between the images behind two statistics, or None when either came without its
    features (a statistics .npz given by a user holds only μ and Σ)."""
    if a.features is None or b.features is None:
        return None
    return kernel_inception_distance(a.features, b.features)
