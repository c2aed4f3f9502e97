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
              seed: int = 0, size_penalty: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Cluster ``values`` into at most ``k`` centroids. Returns (codebook float32 ascending, labels).

    With no more than ``k`` distinct values the codebook is those values: lossless.
    Empty clusters are dropped, so the codebook may be shorter than ``k``.
    ``size_penalty`` > 0 makes it entropy-constrained (``entropy_constrained``): the codes then
    Huffman-code into fewer bits, for a larger distortion.
    """
    values = np.asarray(values, dtype=np.float32).ravel()
    if values.size == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    distinct = np.unique(values)
    if len(distinct) <= k:
        return distinct, np.searchsorted(distinct, values).astype(np.int64)
    s = np.sort(values).astype(np.float64)
    c = init_centroids(s, k, init, seed)
    if size_penalty > 0:
        return entropy_constrained(values, s, c, size_penalty, max_iter)
    prefix = np.concatenate([[0.0], np.cumsum(s)])
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


def _envelope_bounds(c: np.ndarray, cost: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clusters minimizing (x - c_k)^2 + cost_k for sorted ``s``: (surviving k, interval bounds in s).

    (x - c_k)^2 + cost_k = x^2 + (c_k^2 + cost_k - 2 c_k x): the x^2 is common, so the winner is the
    lower envelope of lines of slope -2 c_k, whose pieces are intervals in increasing c order. A
    line above both neighbours' crossing never wins anywhere (the convex hull trick).
    """
    b = c * c + cost
    stack: list[int] = []

    def cross(i: int, j: int) -> float:  # x where lines i < j meet
        return (b[j] - b[i]) / (2 * (c[j] - c[i]))

    for j in range(len(c)):
        if stack and c[j] == c[stack[-1]]:
            if b[j] >= b[stack[-1]]:
                continue
            stack.pop()
        while len(stack) >= 2 and cross(stack[-2], stack[-1]) >= cross(stack[-1], j):
            stack.pop()
        stack.append(j)
    alive = np.array(stack)
    cuts = np.array([cross(i, j) for i, j in zip(stack, stack[1:])])
    return alive, np.concatenate([[0], np.searchsorted(s, cuts, side="right"), [len(s)]])


def entropy_constrained(values: np.ndarray, s: np.ndarray, c: np.ndarray, size_penalty: float,
                        max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Entropy-constrained k-means (Chou, Lookabaugh & Gray 1989) on sorted ``s`` from centroids ``c``.

    Minimizes distortion + lambda x coded bits, where a value's bits are its cluster's ideal
    Huffman length -log2(n_k / n): plain k-means spreads values evenly over the codebook, this one
    grows the clusters that are cheap to code and lets rare ones die, which is what the file pays
    for. ``lambda = size_penalty x mean(s^2)``, so the penalty does not depend on the layer's scale.
    """
    lam = size_penalty * float(np.mean(s * s))
    prefix = np.concatenate([[0.0], np.cumsum(s)])
    lengths = np.full(len(c), np.log2(len(c)))
    bounds = None
    for _ in range(max_iter):
        alive, new_bounds = _envelope_bounds(c, lam * lengths, s)
        n = np.diff(new_bounds)
        alive, new_bounds = alive[n > 0], np.concatenate([[0], new_bounds[1:][n > 0]])
        n = n[n > 0]
        c = (prefix[new_bounds[1:]] - prefix[new_bounds[:-1]]) / n
        lengths = -np.log2(n / len(s))
        if bounds is not None and np.array_equal(bounds, new_bounds):
            break
        bounds = new_bounds
    # Each value's label is its interval; equal values never straddle a bound (searchsorted "right").
    labels = np.searchsorted(bounds[1:], np.searchsorted(s, values, side="left"), side="right")
    codebook, inverse = np.unique(c.astype(np.float32), return_inverse=True)
    return codebook, inverse[labels].astype(np.int64)
