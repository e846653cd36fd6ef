"""KID (ddpmkit.fid.kid): against a plain loop in float64, near 0 for two halves of one set, the
float16 features the cache keeps, the cache itself, and the report's KID column."""

from __future__ import annotations

import numpy as np
import pytest

from ddpmkit.errors import DdpmkitError
from ddpmkit.fid import FidStats, cached_stats, kernel_inception_distance, kid_of
from ddpmkit.fid.kid import SCALE
from ddpmkit.fid.stats import features_file


def _loop_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD² of Bińkowski et al. (2018), eq. in their appendix, term by term."""
    m, d = len(x), x.shape[1]

    def k(a, b):
        return (sum(float(a[i]) * float(b[i]) for i in range(d)) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def _features(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """Inception-like features: non-negative, per-dimension means in [0, 1], from a fixed Gaussian."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(1234).uniform(0, 1, d)  # one distribution for every seed
    return np.abs(rng.normal(means + shift, 0.4, size=(n, d)))


def test_matches_a_plain_loop_on_the_whole_sets():
    a, b = _features(12, 6, seed=1), _features(12, 6, seed=2, shift=0.3)
    kid = kernel_inception_distance(a, b, subsets=3)
    assert kid.subset_size == 12 and kid.subsets == 3
    assert kid.mean == pytest.approx(_loop_mmd2(a, b), rel=1e-10)
    assert kid.std == pytest.approx(0, abs=1e-12)  # each subset is the whole of both sets


def test_matches_a_plain_loop_on_its_subsets():
    """Subsets as documented: rng = default_rng(seed); per subset rng.choice(n_1, m), then rng.choice(n_2, m)."""
    a, b = _features(20, 5, seed=3), _features(17, 5, seed=4, shift=0.2)
    kid = kernel_inception_distance(a, b, subsets=4, subset_size=8, seed=7)
    rng = np.random.default_rng(7)
    values = []
    for _ in range(4):
        x, y = a[rng.choice(20, 8, replace=False)], b[rng.choice(17, 8, replace=False)]
        values.append(_loop_mmd2(x, y))
    assert kid.subset_size == 8
    assert kid.mean == pytest.approx(np.mean(values), rel=1e-10)
    assert kid.std == pytest.approx(np.std(values), rel=1e-8) and kid.std > 0


def test_two_halves_of_one_set_are_near_zero_another_set_is_not():
    feats = _features(1200, 2048, seed=5)
    same = kernel_inception_distance(feats[:600], feats[600:], subsets=20)
    other = kernel_inception_distance(feats[:600], _features(600, 2048, seed=6, shift=0.05), subsets=20)
    assert abs(SCALE * same.mean) < 0.05, same  # unbiased: no small-sample offset as FID has
    assert SCALE * other.mean > 1.0 and other.mean > 50 * abs(same.mean), (same, other)


def test_float16_features_move_kid_by_far_less_than_its_digits():
    a, b = _features(300, 2048, seed=8), _features(400, 2048, seed=9, shift=0.02)
    exact = kernel_inception_distance(a, b, subsets=10)
    half = kernel_inception_distance(a.astype(np.float16), b.astype(np.float16), subsets=10)
    assert SCALE * exact.mean > 0.1
    assert abs(SCALE * (half.mean - exact.mean)) < 0.005 and abs(SCALE * (half.std - exact.std)) < 0.005


def test_bad_shapes_are_one_line_errors():
    with pytest.raises(DdpmkitError, match="one width"):
        kernel_inception_distance(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(DdpmkitError, match="at least 2"):
        kernel_inception_distance(np.zeros((1, 3)), np.zeros((4, 3)))


def test_the_cache_keeps_the_features_and_gives_the_same_kid(tmp_path):
    """Reference statistics read from the cache carry their (float16) features: the KID is the one of
    a fresh computation. Statistics cached without features (older caches) are computed again, once."""
    a, b = _features(30, 16, seed=10), _features(40, 16, seed=11)
    calls = []

    def compute():
        calls.append(1)
        return FidStats.from_features(b)

    fresh, path, reused = cached_stats(tmp_path, "ref", {"source": "b"}, compute)
    assert not reused and features_file(path).is_file()
    again, _, reused = cached_stats(tmp_path, "ref", {"source": "b"}, compute)
    assert reused and len(calls) == 1 and again.features.dtype == np.float16
    np.testing.assert_array_equal(np.asarray(again.features), b.astype(np.float16))
    gen = FidStats.from_features(a)
    assert kid_of(gen, again) == kid_of(gen, fresh)
    features_file(path).unlink()  # as a cache written before KID
    healed, _, reused = cached_stats(tmp_path, "ref", {"source": "b"}, compute)
    assert not reused and len(calls) == 2 and healed.features is not None and features_file(path).is_file()
    # a user's statistics file has only mu and sigma: no KID
    assert kid_of(gen, FidStats.load(path)) is None
