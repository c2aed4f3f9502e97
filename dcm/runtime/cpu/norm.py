"""BatchNormalization (inference) and LRN."""
from __future__ import annotations

import numpy as np

from dcm.runtime.cpu.registry import register
from dcm.runtime.kernel import Kernel


@register("BatchNormalization")
class BatchNormalization(Kernel):
    """y = (x - mean) / sqrt(var + eps) * scale + bias, folded at load into y = x * a + b."""

    weight_inputs = (1, 2, 3, 4)

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        scale, bias, mean, var = (ctx.opt_const(node, i).astype(np.float64) for i in range(1, 5))
        a = scale / np.sqrt(var + float(self.attrs.get("epsilon", 1e-5)))
        self.a = a.astype(np.float32)
        self.b = (bias - mean * a).astype(np.float32)

    def __call__(self, x, *_):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x * self.a.reshape(shape) + self.b.reshape(shape),)


@register("LRN")
class LRN(Kernel):
    def __call__(self, x):
        size = int(self.attrs["size"])
        alpha = float(self.attrs.get("alpha", 1e-4))
        beta = float(self.attrs.get("beta", 0.75))
        bias = float(self.attrs.get("bias", 1.0))
        sq = np.square(x.astype(np.float64))
        lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
        padded = np.pad(sq, [(0, 0), (lo, hi)] + [(0, 0)] * (x.ndim - 2))
        c = np.concatenate([np.zeros_like(padded[:, :1]), np.cumsum(padded, axis=1)], axis=1)
        window = c[:, size:] - c[:, : c.shape[1] - size]
        return ((x / (bias + alpha / size * window) ** beta).astype(np.float32),)
