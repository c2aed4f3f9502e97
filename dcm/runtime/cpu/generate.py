"""Ops that make a tensor from a shape or a range: Constant, ConstantOfShape, Range, Expand, Tile, EyeLike.

Their output size comes from values (often computed at run time from the symbolic batch or sequence
length), so each is bounded by spec rule 8's per-tensor limit before anything is allocated.
"""
from __future__ import annotations

import math

import numpy as np

from dcm.errors import UnsupportedOpError
from dcm.runtime.cpu.registry import register
from dcm.runtime.cpu.shape import ONNX_NUMPY, check_elements, ints, load_ints
from dcm.runtime.kernel import Kernel


@register("Constant")
class Constant(Kernel):
    """The converter folds Constant nodes into tensors; a .dcm may still hold one (value attribute as
    a tensor, or value_float(s)/value_int(s))."""

    quiet = True

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        a = self.attrs
        if isinstance(a.get("value"), np.ndarray):
            self.value = a["value"]
        elif "value_float" in a or "value_floats" in a:
            self.value = np.array(a.get("value_float", a.get("value_floats")), dtype=np.float32)
        elif "value_int" in a or "value_ints" in a:
            self.value = np.array(a.get("value_int", a.get("value_ints")), dtype=np.int64)
        else:
            raise UnsupportedOpError(f"Constant {node.name!r}: needs a tensor, float(s) or int(s) value")

    def __call__(self):
        return (self.value,)


@register("ConstantOfShape")
class ConstantOfShape(Kernel):
    """A tensor of the given shape filled with the one-element ``value`` attribute (float32 0 when absent)."""

    quiet = True

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        value = self.attrs.get("value")
        value = np.zeros(1, np.float32) if value is None else value
        if not isinstance(value, np.ndarray) or value.size != 1:
            raise UnsupportedOpError(f"ConstantOfShape {node.name!r}: value must be a one-element tensor")
        self.fill = value.reshape(())
        self.shape = load_ints(self, ctx, 0)

    def __call__(self, shape=None):
        shape = self.shape if shape is None else ints(shape)
        check_elements(shape, "ConstantOfShape")
        return (np.full(shape, self.fill, dtype=self.fill.dtype),)


@register("Range")
class Range(Kernel):
    """start, start + delta, ... up to (excluding) limit: max(ceil((limit - start) / delta), 0) values."""

    def __call__(self, start, limit, delta):
        start, limit, delta = (v.reshape(()) for v in (start, limit, delta))
        if delta == 0:
            raise ValueError("delta is 0")
        n = max(math.ceil((float(limit) - float(start)) / float(delta)), 0)
        check_elements([n], "Range")
        return ((start + np.arange(n, dtype=start.dtype) * delta).astype(start.dtype),)


@register("Expand")
class Expand(Kernel):
    """Broadcast to a shape (in both directions, as numpy does): a read-only view, no copy."""

    quiet = True

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.shape = load_ints(self, ctx, 1)
        # per (x's shape, item size) with the constant target: (the result's shape, its strides in bytes)
        self._views: dict[tuple, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def __call__(self, x, shape=None):
        if shape is None and type(x) is np.ndarray and x.flags.c_contiguous:
            view = self._views.get((x.shape, x.itemsize))
            if view is not None:  # np.broadcast_to's view made directly: 0.4 us against its 4.5 and 3 more
                y = np.ndarray(view[0], x.dtype, x, 0, view[1])  # for np.broadcast_shapes (a mask's Expand)
                y.flags.writeable = False
                return (y,)
        y = self._broadcast(x, self.shape if shape is None else ints(shape))
        if shape is None and type(x) is np.ndarray and x.flags.c_contiguous and x.size and not x.dtype.hasobject:
            if len(self._views) >= 16:
                self._views.clear()
            self._views[(x.shape, x.itemsize)] = (y.shape, y.strides)
        return (y,)

    @staticmethod
    def _broadcast(x: np.ndarray, shape) -> np.ndarray:
        out = np.broadcast_shapes(x.shape, tuple(shape))
        check_elements(out, "Expand")
        return np.broadcast_to(x, out)


@register("Tile")
class Tile(Kernel):
    quiet = True

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.repeats = load_ints(self, ctx, 1)

    def __call__(self, x, repeats=None):
        repeats = self.repeats if repeats is None else ints(repeats)
        if len(repeats) != x.ndim or min(repeats, default=0) < 0:
            raise ValueError(f"repeats {repeats} must be {x.ndim} non-negative counts")
        check_elements([d * r for d, r in zip(x.shape, repeats)], "Tile")
        return (np.tile(x, repeats),)


@register("EyeLike")
class EyeLike(Kernel):
    """Ones on diagonal ``k`` of a matrix shaped as the 2-D input, in ``dtype`` (else the input's type)."""

    quiet = True

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        dtype = self.attrs.get("dtype")
        if dtype is not None and int(dtype) not in ONNX_NUMPY:
            raise UnsupportedOpError(f"EyeLike {node.name!r}: element type {dtype} is not supported")
        self.dtype = None if dtype is None else ONNX_NUMPY[int(dtype)]

    def __call__(self, x):
        if x.ndim != 2:
            raise ValueError(f"input of rank {x.ndim}, a matrix expected")
        return (np.eye(*x.shape, k=int(self.attrs.get("k", 0)), dtype=self.dtype or x.dtype),)
