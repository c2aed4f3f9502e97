"""1-D k-means weight sharing (paper section 3), fast enough for 10M+ weights.

In one dimension the clusters are intervals between centroid midpoints, so after one sort each
Lloyd step is a ``searchsorted`` of K midpoints and K prefix-sum differences: O(K log n) per
iteration instead of the O(nK) distance matrix of a generic k-means.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

Init = Literal["linear", "density", "random"]


def init_centroids(sorted_values: np.ndarray, k: int, init: Init, seed: int = 0) -> np.ndarray:
    """The paper's three initializations; linear spacing over [min, max] worked best there."""
    lo, hi = float(sorted_values[0]), float(sorted_values[-1])
    if init == "linear":
        return np.linspace(lo, hi, k)
    if init == "density":  # evenly spaced on the CDF
        return np.quantile(sorted_values, (np.arange(k) + 0.5) / k).astype(np.float64)
    if init == "random":  # Forgy: k distinct weights chosen at random (seeded)
        distinct = np.unique(sorted_values)
        pick = np.random.default_rng(seed).choice(len(distinct), size=k, replace=False)
        return np.sort(distinct[pick]).astype(np.float64)
    raise ValueError(f"unknown centroid init {init!r}: use linear, density or random")


def assign(values: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid of a sorted codebook (ties go to the lower one)."""
    mids = (codebook[1:].astype(np.float64) + codebook[:-1]) / 2
    return np.searchsorted(mids, values, side="left").astype(np.int64)


def kmeans_1d(values: np.ndarray, k: int, init: Init = "linear", max_iter: int = 100,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cluster ``values`` into at most ``k`` centroids. Returns (codebook float32 ascending, labels).

    With no more than ``k`` distinct values the codebook is those values: lossless.
    Empty clusters are dropped, so the codebook may be shorter than ``k``.
    """
    values = np.asarray(values, dtype=np.float32).ravel()
    if values.size == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    distinct = np.unique(values)
    if len(distinct) <= k:
        return distinct, np.searchsorted(distinct, values).astype(np.int64)
    s = np.sort(values).astype(np.float64)
    prefix = np.concatenate([[0.0], np.cumsum(s)])
    c = init_centroids(s, k, init, seed)
    for _ in range(max_iter):
        bounds = np.concatenate([[0], np.searchsorted(s, (c[1:] + c[:-1]) / 2, side="right"), [len(s)]])
        n = np.diff(bounds)
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        new = np.where(n > 0, sums / np.maximum(n, 1), c)
        new = np.maximum.accumulate(new)  # keep order under float rounding
        if np.allclose(new, c, rtol=0, atol=1e-9 * max(1.0, float(np.abs(s).max()))):
            c = new
            break
        c = new
    bounds = np.concatenate([[0], np.searchsorted(s, (c[1:] + c[:-1]) / 2, side="right"), [len(s)]])
    codebook = np.unique(c[np.diff(bounds) > 0].astype(np.float32))
    return codebook, assign(values, codebook)
