"""Entropy-constrained k-means: fewer coded bits for more distortion, each value's cluster the cheapest."""
import numpy as np
import pytest

from dcm.encoder.kmeans import _envelope_bounds, kmeans_1d


def _entropy(labels):
    p = np.bincount(labels) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def test_penalty_trades_distortion_for_entropy():
    w = (np.random.default_rng(0).laplace(size=20_000) * 0.05).astype(np.float32)
    rows = []
    for penalty in (0.0, 0.01, 0.1, 0.3):
        cb, labels = kmeans_1d(w, 32, size_penalty=penalty)
        assert np.all(np.diff(cb) > 0) and labels.min() >= 0 and labels.max() < len(cb)
        rows.append((_entropy(labels), float(np.mean((cb[labels] - w) ** 2))))
    entropies, errors = zip(*rows)
    assert list(entropies) == sorted(entropies, reverse=True) and entropies[-1] < entropies[0] - 1.5
    assert list(errors) == sorted(errors)


def test_each_centroid_is_the_mean_of_its_values():
    w = (np.random.default_rng(1).normal(size=5_000)).astype(np.float32)
    cb, labels = kmeans_1d(w, 16, size_penalty=0.05)
    for k in range(len(cb)):
        assert cb[k] == pytest.approx(float(w[labels == k].astype(np.float64).mean()), rel=1e-5, abs=1e-6)


def test_envelope_matches_brute_force_argmin():
    rng = np.random.default_rng(2)
    for _ in range(20):
        c = np.sort(rng.normal(size=12))
        cost = rng.uniform(0, 0.5, size=12)
        s = np.sort(rng.normal(size=400))
        alive, bounds = _envelope_bounds(c, cost, s)
        got = np.repeat(alive, np.diff(bounds))
        brute = np.argmin((s[:, None] - c[None, :]) ** 2 + cost[None, :], axis=1)
        best = ((s - c[brute]) ** 2 + cost[brute])
        assert np.allclose((s - c[got]) ** 2 + cost[got], best)  # same cost (ties may pick either)


def test_few_distinct_values_stay_exact():
    w = np.array([0.5, -1.0, 0.5, 2.0], np.float32)
    cb, labels = kmeans_1d(w, 4, size_penalty=1.0)
    np.testing.assert_array_equal(cb[labels], w)
