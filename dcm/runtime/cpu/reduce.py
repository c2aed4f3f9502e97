"""ReduceMean / ReduceSum / ReduceMax: axes are an attribute before opset 18 and an input from 18."""
from __future__ import annotations

import numpy as np

from dcm.runtime.cpu.registry import register
from dcm.runtime.cpu.shape import _const_ints
from dcm.runtime.kernel import Kernel


class _Reduce(Kernel):
    fn = staticmethod(np.mean)
    weight_inputs = (1,)

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axes = _const_ints(ctx, node, 1, "axes")
        self.keep = bool(self.attrs.get("keepdims", 1))
        self.noop_empty = bool(self.attrs.get("noop_with_empty_axes", 0))

    def __call__(self, x, _axes=None):
        if not self.axes and self.noop_empty:
            return (x,)
        axes = tuple(self.axes) if self.axes else None
        return (self.fn(x, axis=axes, keepdims=self.keep).astype(x.dtype),)


@register("ReduceMean")
class ReduceMean(_Reduce):
    fn = staticmethod(np.mean)


@register("ReduceSum")
class ReduceSum(_Reduce):
    fn = staticmethod(np.sum)


@register("ReduceMax")
class ReduceMax(_Reduce):
    fn = staticmethod(np.max)
