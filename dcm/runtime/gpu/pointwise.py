"""Activations, softmax, arithmetic, BatchNormalization, LRN and reductions on torch."""
from __future__ import annotations

import math

import torch

from dcm.runtime.cpu import activation as cpu_act
from dcm.runtime.cpu import norm as cpu_norm
from dcm.runtime.cpu import reduce as cpu_reduce
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
        lo = self.attrs.get("min") if lo is None else float(lo)
        hi = self.attrs.get("max") if hi is None else float(hi)
        return (x.clone() if lo is None and hi is None else torch.clamp(x, lo, hi),)  # clamp needs a bound


class _Softmax(cpu_act._SoftmaxBase):
    log = False

    def __call__(self, x):
        shape, axis = x.shape, self.axis % max(x.dim(), 1)
        if self.legacy:
            x, axis = x.reshape(math.prod(shape[:axis]), -1), 1
        y = torch.log_softmax(x, axis) if self.log else torch.softmax(x, axis)
        return (y.reshape(shape),)


@register("Softmax")
class Softmax(_Softmax):
    log = False


@register("LogSoftmax")
class LogSoftmax(_Softmax):
    log = True


class _Binary(Kernel):
    fn = staticmethod(torch.add)

    def __call__(self, a, b):
        return (self.fn(a, b),)


@register("Add")
class Add(_Binary):
    fn = staticmethod(torch.add)


@register("Sub")
class Sub(_Binary):
    fn = staticmethod(torch.sub)


@register("Mul")
class Mul(_Binary):
    fn = staticmethod(torch.mul)


@register("Div")
class Div(Kernel):
    def __call__(self, a, b):
        if not a.is_floating_point() and not b.is_floating_point():
            return (torch.div(a, b, rounding_mode="trunc"),)
        return (a / b,)


@register("BatchNormalization")
class BatchNormalization(cpu_norm.BatchNormalization):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.a, self.b = (torch.as_tensor(v, device=ctx.device) for v in (self.a, self.b))


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


class _Reduce(cpu_reduce._Reduce):
    method = "mean"  # the torch.Tensor method, called as method(dims, keepdim=...)

    def __call__(self, x, axes=None):
        axes = self.axes if self.axes is not None else axes.tolist()  # None: given at run time
        if not axes and self.noop_empty:
            return (x,)
        dims = tuple(axes) if axes else tuple(range(x.dim()))
        return (getattr(x, self.method)(dims, keepdim=self.keep),)


@register("ReduceMean")
class ReduceMean(_Reduce):
    method = "mean"


@register("ReduceSum")
class ReduceSum(_Reduce):
    method = "sum"


@register("ReduceMax")
class ReduceMax(_Reduce):
    method = "amax"
