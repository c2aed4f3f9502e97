"""Magnitude pruning masks (paper section 2), deterministic so that same input gives same file."""
from __future__ import annotations

import numpy as np


def mask_by_sparsity(weights: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep the ``round(n * (1 - sparsity))`` largest magnitudes; ties broken by flat position."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    a = np.abs(np.asarray(weights)).ravel()
    keep = int(round(a.size * (1.0 - sparsity)))
    mask = np.zeros(a.size, dtype=bool)
    if keep >= a.size:
        mask[:] = True
    elif keep > 0:
        threshold = np.partition(a, a.size - keep)[a.size - keep]
        mask = a > threshold
        ties = np.flatnonzero(a == threshold)
        mask[ties[: keep - int(mask.sum())]] = True
    return mask.reshape(np.shape(weights))


def mask_by_quality(weights: np.ndarray, quality: float) -> np.ndarray:
    """The paper's rule: prune |w| <= quality x std(w) of the layer."""
    w = np.asarray(weights)
    return np.abs(w) > quality * float(np.std(w))
