"""Pointwise activations and the softmax family."""
from __future__ import annotations

import math

import numpy as np

from dcm.runtime.cpu.registry import register
from dcm.runtime.kernel import Kernel


@register("Relu")
class Relu(Kernel):
    def __call__(self, x):
        return (np.maximum(x, np.float32(0)),)


@register("LeakyRelu")
class LeakyRelu(Kernel):
    def __call__(self, x):
        alpha = np.float32(self.attrs.get("alpha", 0.01))
        return (np.where(x >= 0, x, x * alpha),)


@register("Sigmoid")
class Sigmoid(Kernel):
    def __call__(self, x):
        with np.errstate(over="ignore"):
            return ((1.0 / (1.0 + np.exp(-x))).astype(x.dtype),)


@register("Tanh")
class Tanh(Kernel):
    def __call__(self, x):
        return (np.tanh(x),)


@register("Clip")
class Clip(Kernel):
    """Bounds are attributes before opset 11 and (constant or runtime) inputs after."""

    def __call__(self, x, lo=None, hi=None):
        lo = self.attrs.get("min", -np.inf) if lo is None else lo
        hi = self.attrs.get("max", np.inf) if hi is None else hi
        return (np.minimum(np.maximum(x, np.float32(lo)), np.float32(hi)).astype(x.dtype),)


class _SoftmaxBase(Kernel):
    """Opset >= 13: along ``axis`` (default -1). Older: on the input flattened to 2-D at ``axis`` (default 1)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.legacy = ctx.model.opset < 13
        self.axis = int(self.attrs.get("axis", 1 if self.legacy else -1))

    def _apply(self, x, log: bool):
        shape = x.shape
        axis = self.axis % max(x.ndim, 1)
        if self.legacy:
            x = x.reshape(math.prod(shape[:axis]), -1)
            axis = 1
        z = x - x.max(axis=axis, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=axis, keepdims=True)
        y = z - np.log(s) if log else e / s
        return (y.reshape(shape).astype(np.float32),)


@register("Softmax")
class Softmax(_SoftmaxBase):
    def __call__(self, x):
        return self._apply(x, log=False)


@register("LogSoftmax")
class LogSoftmax(_SoftmaxBase):
    def __call__(self, x):
        return self._apply(x, log=True)
