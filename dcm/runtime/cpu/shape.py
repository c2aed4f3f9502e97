"""Layout ops: Flatten, Reshape, Transpose, Concat, Squeeze, Unsqueeze, Pad, Identity, Dropout."""
from __future__ import annotations

import math

import numpy as np

from dcm.errors import UnsupportedOpError
from dcm.runtime.cpu.registry import register
from dcm.runtime.kernel import Kernel


def _const_ints(ctx, node, i: int, attr: str):
    """An int list given as input i (newer opsets) or as attribute ``attr`` (older ones)."""
    v = ctx.opt_const(node, i)
    if v is not None:
        return [int(a) for a in np.asarray(v).ravel()]
    return node.attrs.get(attr)


@register("Identity", "Dropout")
class Identity(Kernel):
    quiet = True

    def __call__(self, x, *_):
        return (x,) if len(self.node.outputs) == 1 else (x, np.ones(x.shape, dtype=bool))


@register("Flatten")
class Flatten(Kernel):
    quiet = True

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = int(self.attrs.get("axis", 1))

    def __call__(self, x):
        axis = self.axis % (x.ndim + 1) if x.ndim else 0
        return (x.reshape(math.prod(x.shape[:axis]), -1),)


@register("Reshape")
class Reshape(Kernel):
    weight_inputs = (1,)

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.shape = _const_ints(ctx, node, 1, "shape")
        if self.shape is None:
            raise UnsupportedOpError(f"Reshape {node.name!r}: the target shape must be constant")
        self.allowzero = bool(self.attrs.get("allowzero", 0))

    def __call__(self, x, _shape=None):
        shape = [x.shape[i] if (d == 0 and not self.allowzero) else d for i, d in enumerate(self.shape)]
        return (x.reshape(shape),)


@register("Transpose")
class Transpose(Kernel):
    def __call__(self, x):
        perm = self.attrs.get("perm")
        return (np.ascontiguousarray(np.transpose(x, perm)),)


@register("Concat")
class Concat(Kernel):
    def __call__(self, *xs):
        return (np.concatenate(xs, axis=int(self.attrs["axis"])),)


@register("Squeeze")
class Squeeze(Kernel):
    weight_inputs = (1,)

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axes = _const_ints(ctx, node, 1, "axes")

    def __call__(self, x, _axes=None):
        axes = tuple(self.axes) if self.axes is not None else tuple(i for i, d in enumerate(x.shape) if d == 1)
        return (np.squeeze(x, axis=axes),)


@register("Unsqueeze")
class Unsqueeze(Kernel):
    weight_inputs = (1,)

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axes = _const_ints(ctx, node, 1, "axes")
        if self.axes is None:
            raise UnsupportedOpError(f"Unsqueeze {node.name!r}: axes must be constant")

    def __call__(self, x, _axes=None):
        return (np.expand_dims(x, tuple(self.axes)),)


@register("Pad")
class Pad(Kernel):
    """Pads and value are attributes before opset 11 and constant inputs from 11."""

    weight_inputs = (1, 2, 3)

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.pads = _const_ints(ctx, node, 1, "pads")
        value = ctx.opt_const(node, 2)
        self.value = float(self.attrs.get("value", 0.0)) if value is None else float(np.asarray(value).ravel()[0])
        self.axes = _const_ints(ctx, node, 3, "axes") if len(node.inputs) > 3 else None
        self.mode = self.attrs.get("mode", "constant")
        if self.mode not in ("constant", "reflect", "edge"):
            raise UnsupportedOpError(f"Pad {node.name!r}: mode {self.mode!r} is not supported")

    def __call__(self, x, *_):
        axes = [a % x.ndim for a in self.axes] if self.axes else list(range(x.ndim))
        k = len(axes)
        widths = [(0, 0)] * x.ndim
        for j, a in enumerate(axes):
            widths[a] = (self.pads[j], self.pads[j + k])
        if any(b < 0 or e < 0 for b, e in widths):
            raise UnsupportedOpError(f"Pad {self.node.name!r}: negative pads are not supported")
        if self.mode == "constant":
            return (np.pad(x, widths, constant_values=self.value),)
        return (np.pad(x, widths, mode=self.mode),)


@register("Shape")
class Shape(Kernel):
    def __call__(self, x):
        start = int(self.attrs.get("start", 0))
        end = self.attrs.get("end")
        return (np.array(x.shape[start:end], dtype=np.int64),)


@register("Gather")
class Gather(Kernel):
    def __call__(self, x, idx):
        return (np.take(x, np.asarray(idx, dtype=np.int64), axis=int(self.attrs.get("axis", 0))),)


_CAST = {1: np.float32, 6: np.int32, 7: np.int64, 10: np.float16, 11: np.float64, 9: np.bool_}


@register("Cast")
class Cast(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        to = int(self.attrs["to"])
        if to not in _CAST:
            raise UnsupportedOpError(f"Cast {node.name!r}: target type {to} is not supported")
        self.to = _CAST[to]

    def __call__(self, x):
        return (np.asarray(x).astype(self.to),)
