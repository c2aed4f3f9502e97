"""Reductions, ArgMax/ArgMin, CumSum, CumProd and TopK on torch. Each subclasses its CPU kernel (attribute and
axes parsing); the rare inputs torch has no exact form for (an empty reduction, whose result is the
reduction's identity; integer inputs, which ONNX reduces in their own type) run the CPU kernel on
host copies (``fallback.on_host``)."""
from __future__ import annotations

import math

import torch

from dcm.runtime.cpu import reduce as cpu
from dcm.runtime.gpu.fallback import on_host, to_host
from dcm.runtime.gpu.registry import register


def _axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} is out of bounds for a tensor of rank {rank}")
    return axis % max(rank, 1)


class _Reduce:
    """Mixed into a CPU reduction kernel: ``torch_reduce(x, dims)`` is the torch form (dims: at
    least one axis; a reduction over none, noop_with_empty_axes, and a 0-d input take the host path)."""

    def __call__(self, x, axes=None):
        if not x.is_floating_point() or x.numel() == 0 or x.dim() == 0:
            return on_host(super().__call__, x.device, x, axes)
        given = axes  # a run-time axes input, or None
        axes = self.axes if self.axes is not None else cpu._ints(to_host(axes), "axes")
        if not axes and self.noop_empty:  # still |x|, x^2, log x... per value: the CPU kernel's rule
            return on_host(super().__call__, x.device, x, given)
        dims = tuple(_axis(a, x.dim()) for a in axes) if axes else tuple(range(x.dim()))
        if len(set(dims)) != len(dims):
            raise ValueError(f"repeated axis in {axes}")
        return (self.torch_reduce(x, dims),)

    def torch_reduce(self, x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        """(Named apart from the CPU kernel's ``reduce``, which its ``__call__`` still runs on host copies.)"""
        raise NotImplementedError


def _torch_reduction(op: str, per_value, total):
    """A kernel: ``total(per_value(x), dims, keepdim)``."""
    def torch_reduce(self, x, dims):
        return total(per_value(x), dims, self.keep)

    return register(op)(type(op, (_Reduce, getattr(cpu, op)), {"torch_reduce": torch_reduce}))


def _prod(x: torch.Tensor, dims: tuple[int, ...], keep: bool) -> torch.Tensor:
    for d in sorted(dims, reverse=True):  # torch.prod takes one dim at a time
        x = x.prod(d, keepdim=keep) if keep else x.prod(d)
    return x


_same = lambda x: x  # noqa: E731
_torch_reduction("ReduceSum", _same, lambda v, d, k: v.sum(d, keepdim=k))
_torch_reduction("ReduceMean", _same, lambda v, d, k: v.mean(d, keepdim=k))
_torch_reduction("ReduceMax", _same, lambda v, d, k: v.amax(d, keepdim=k))
_torch_reduction("ReduceMin", _same, lambda v, d, k: v.amin(d, keepdim=k))
_torch_reduction("ReduceProd", _same, _prod)
_torch_reduction("ReduceL1", torch.abs, lambda v, d, k: v.sum(d, keepdim=k))
_torch_reduction("ReduceL2", torch.square, lambda v, d, k: v.sum(d, keepdim=k).sqrt())
_torch_reduction("ReduceSumSquare", torch.square, lambda v, d, k: v.sum(d, keepdim=k))
_torch_reduction("ReduceLogSum", _same, lambda v, d, k: v.sum(d, keepdim=k).log())
_torch_reduction("ReduceLogSumExp", _same, lambda v, d, k: torch.logsumexp(v, d, keepdim=k))


class _ArgExtreme:
    torch_fn = staticmethod(torch.argmax)  # (the CPU kernel's numpy one is ``fn``)

    def __call__(self, x):
        if x.numel() == 0 or x.dtype == torch.bool:
            return on_host(super().__call__, x.device, x)
        axis = _axis(self.axis, x.dim())
        if self.last:  # torch, like numpy, returns the first extreme
            i = x.shape[axis] - 1 - self.torch_fn(torch.flip(x, (axis,)), axis, keepdim=self.keep)
        else:
            i = self.torch_fn(x, axis, keepdim=self.keep)
        return (i,)


@register("ArgMax")
class ArgMax(_ArgExtreme, cpu.ArgMax):
    torch_fn = staticmethod(torch.argmax)


@register("ArgMin")
class ArgMin(_ArgExtreme, cpu.ArgMin):
    torch_fn = staticmethod(torch.argmin)


class _Cumulative:
    """Mixed into a CPU running reduction: ``torch_fn`` (torch.cumsum, torch.cumprod) its torch form."""

    def __call__(self, x, axis):
        axis = _axis(cpu._one_int(to_host(axis), "axis"), x.dim())
        reverse = bool(self.attrs.get("reverse", 0))
        y = self.torch_fn(torch.flip(x, (axis,)) if reverse else x, axis, dtype=x.dtype)
        if self.attrs.get("exclusive", 0):  # shifted by one place: exact, unlike y - x or y / x
            first = torch.full_like(y.narrow(axis, 0, min(1, y.shape[axis])), self.identity)
            y = torch.cat([first, y.narrow(axis, 0, max(y.shape[axis] - 1, 0))], axis)
        return (torch.flip(y, (axis,)) if reverse else y,)


@register("CumSum")
class CumSum(_Cumulative, cpu.CumSum):
    torch_fn = staticmethod(torch.cumsum)


@register("CumProd")
class CumProd(_Cumulative, cpu.CumProd):
    torch_fn = staticmethod(torch.cumprod)


@register("TopK")
class TopK(cpu.TopK):
    """A stable sort: equal values in index order, as ONNX requires (torch.topk does not promise it)."""

    def __call__(self, x, k=None):
        k = self.k if k is None else cpu._one_int(to_host(k), "k")
        if k is None:
            raise ValueError("k is missing (neither the attribute nor the input is given)")
        axis = _axis(self.axis, x.dim())
        n = x.shape[axis]
        if not 0 <= k <= n:
            raise ValueError(f"k = {k} is outside 0..{n}, the size of axis {axis}")
        if x.dtype == torch.bool or math.prod(x.shape) == 0:
            return on_host(super().__call__, x.device, x, None if self.k is not None else torch.tensor([k]))
        values, indices = torch.sort(x, dim=axis, descending=self.largest, stable=True)
        return values.narrow(axis, 0, k).contiguous(), indices.narrow(axis, 0, k).contiguous()
