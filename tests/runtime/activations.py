"""The activations the compiled kernels apply as they store their output (``pointconv.ACTS``), in numpy:
the tests' reference for every kernel that takes an ``act`` tuple."""
from __future__ import annotations

import numpy as np
from scipy.special import erf

# One of each kind, as the kernels take them: (name, a, b)
ALL = [("relu", 0.0, 0.0), ("clip", 0.0, 6.0), ("sigmoid", 0.0, 0.0), ("silu", 1.0, 0.0), ("hardswish", 0.0, 0.0),
       ("gelu", 0.0, 0.0), ("gelu_tanh", 0.0, 0.0)]


def activation(act: tuple[str, float, float] | None, y: np.ndarray) -> np.ndarray:
    """act applied to y (None: y itself): clip's a and b are its bounds, silu's a its alpha."""
    if act is None:
        return y
    kind, a, b = act
    return {"relu": lambda: np.maximum(y, 0), "clip": lambda: np.clip(y, a, b),
            "sigmoid": lambda: 1 / (1 + np.exp(-y)), "silu": lambda: y / (1 + np.exp(-a * y)),
            "hardswish": lambda: y * np.clip(y / 6 + 0.5, 0, 1), "gelu": lambda: 0.5 * y * (1 + erf(y / np.sqrt(2))),
            "gelu_tanh": lambda: 0.5 * y * (1 + np.tanh(np.sqrt(2 / np.pi) * (y + 0.044715 * y**3)))}[kind]()
