"""The entry to the compiled pointwise kernels (``_pointwise.c`` through ``native``): which arrays
they take, and an activation as a new array.

An activation is named for ``native.activate`` by ``(name, alpha, beta)``: a kernel's ``act``
(activation.py), which ``dcm.runtime.fusion`` also applies, with a bias and a residual, to the output
of the Conv or Gemm that absorbed the activation.
"""
from __future__ import annotations

import numpy as np

from dcm.runtime.cpu import native

Act = tuple[str, float, float]


def compiled(x: np.ndarray) -> bool:
    """Whether x can go through the compiled kernels: float32, C-contiguous, and dcm built with them.
    float16 and float64 keep their numpy paths (and their results)."""
    return native.activate is not None and x.dtype == np.float32 and x.flags.c_contiguous


def activate(x: np.ndarray, act: Act, threads: int = 1) -> np.ndarray:
    """The compiled activation ``act`` of x (an array ``compiled`` accepts), as a new array; large
    arrays split over ``threads`` threads of the native pool."""
    y = np.empty_like(x)
    native.activate(x, y, *act, threads=threads)
    return y
