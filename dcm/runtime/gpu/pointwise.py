"""Relu-family activations, softmax, BatchNormalization and LRN on torch."""
from __future__ import annotations

import math

import numpy as np
import torch
from numpy.lib.array_utils import normalize_axis_index

from dcm.runtime.cpu import activation as cpu_act
from dcm.runtime.cpu import norm as cpu_norm
from dcm.runtime.gpu.fallback import Native
from dcm.runtime.gpu.registry import register
from dcm.runtime.kernel import Kernel


class _Unary(Kernel):
    fn = staticmethod(torch.relu)

    def __call__(self, x):
        return (self.fn(x),)


@register("Relu")
class Relu(_Unary):
    fn = staticmethod(torch.relu)


@register("Sigmoid")
class Sigmoid(_Unary):
    fn = staticmethod(torch.sigmoid)


@register("Tanh")
class Tanh(_Unary):
    fn = staticmethod(torch.tanh)


@register("LeakyRelu")
class LeakyRelu(Kernel):
    def __call__(self, x):
        return (torch.nn.functional.leaky_relu(x, float(self.attrs.get("alpha", 0.01))),)


@register("Clip")
class Clip(Kernel):
    def __call__(self, x, lo=None, hi=None):
        lo = self.attrs.get("min") if lo is None else _bound(lo)
        hi = self.attrs.get("max") if hi is None else _bound(hi)
        return (x.clone() if lo is None and hi is None else torch.clamp(x, lo, hi),)  # clamp needs a bound


def _bound(v: torch.Tensor) -> float | int:
    """A Clip bound input as a Python number (an int for an integer bound, so clamp keeps x's type)."""
    if v.numel() != 1:
        raise ValueError(f"Clip bounds must be scalars, got shape {list(v.shape)}")
    return v.reshape(()).item()


class _Softmax(cpu_act._SoftmaxBase):
    log = False

    def __call__(self, x):
        shape, axis = x.shape, normalize_axis_index(self.axis, max(x.dim(), 1))
        if self.legacy:
            x, axis = x.reshape(math.prod(shape[:axis]), -1), 1
        if x.dtype == torch.float16 and not self.log and x.numel():
            # Each step rounded to float16, as the CPU kernel and ONNX's reference compute it (the
            # backend cases expect those values: 2 ulp from float32 rounded once).
            y = torch.exp(x - x.amax(axis, keepdim=True))
            return ((y / y.sum(axis, keepdim=True)).reshape(shape),)
        work = torch.float64 if x.dtype == torch.float64 else torch.float32  # float16 LogSoftmax in float32
        y = torch.log_softmax(x, axis, dtype=work) if self.log else torch.softmax(x, axis, dtype=work)
        return (y.reshape(shape).to(x.dtype),)


@register("Softmax")
class Softmax(_Softmax):
    log = False


@register("LogSoftmax")
class LogSoftmax(_Softmax):
    log = True


@register("BatchNormalization")
class BatchNormalization(Native, cpu_norm.BatchNormalization):
    """Statistics that are constants (an exported network's) are folded at load; computed ones use
    the CPU kernel."""

    cpu_kernel = cpu_norm.BatchNormalization
    fuses_relu = False  # the CPU kernel applies the activation after it in its compiled pass; this one has none

    @classmethod
    def native(cls, node, ctx) -> bool:
        return all(ctx.is_const(name) for name in node.inputs[1:])

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        a, b = self.folded  # float64
        shape = (1, -1) if a.ndim == 1 else (1, *a.shape)
        self.a, self.b = (torch.as_tensor(v.astype(np.float32).reshape(shape), device=ctx.device) for v in (a, b))
        self.a64, self.b64 = (torch.as_tensor(v.reshape(shape), device=ctx.device) for v in (a, b))

    def __call__(self, x, *_stats):
        a, b = (self.a64, self.b64) if x.dtype == torch.float64 else (self.a, self.b)
        extra = (1,) * (x.dim() - a.dim())  # per channel: over the spatial axes too
        return ((x.to(a.dtype) * a.reshape(*a.shape, *extra) + b.reshape(*b.shape, *extra)).to(x.dtype),)


@register("LRN")
class LRN(Kernel):
    def __call__(self, x):
        size = int(self.attrs["size"])
        alpha, beta = float(self.attrs.get("alpha", 1e-4)), float(self.attrs.get("beta", 0.75))
        bias = float(self.attrs.get("bias", 1.0))
        lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
        sq = torch.nn.functional.pad(x.double().square().movedim(1, -1), (lo, hi)).movedim(-1, 1)
        c = torch.cat([torch.zeros_like(sq[:, :1]), sq.cumsum(1)], 1)
        window = c[:, size:] - c[:, : c.shape[1] - size]
        return ((x / (bias + alpha / size * window) ** beta).float(),)
