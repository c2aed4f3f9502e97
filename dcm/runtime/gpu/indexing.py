"""Slicing, splitting, broadcasting and index ops on torch: Slice, Split, Expand, Tile, Trilu,
GatherElements, Constant, ConstantOfShape, Range, CastLike. The CPU kernels parse attributes and
load-time inputs (subclassed); indices are range-checked as on the CPU (an IndexError names the node),
and output sizes are bounded before allocating. Index ops that scatter (ScatterND, ScatterElements)
and GatherND run through the CPU fallback (fallback.py)."""
from __future__ import annotations

import math

import numpy as np
import torch

from dcm.runtime.cpu import generate as cpu_gen
from dcm.runtime.cpu import indexing as cpu_index
from dcm.runtime.cpu import shape as cpu
from dcm.runtime.cpu.shape import check_elements, ints, normal_axis
from dcm.runtime.gpu.registry import register


def torch_dtype(dtype) -> torch.dtype:
    """numpy dtype -> torch dtype."""
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


@register("Slice")
class Slice(cpu.Slice):
    def __call__(self, x, starts=None, ends=None, axes=None, steps=None):
        starts, ends, axes, steps = (p if g is None else ints(g)
                                     for p, g in zip(self.params, (starts, ends, axes, steps)))
        if starts is None or ends is None or len(starts) != len(ends):
            raise ValueError("starts and ends must be given, of equal length")
        axes = list(range(len(starts))) if axes is None else [normal_axis(a, x.dim()) for a in axes]
        steps = [1] * len(starts) if steps is None else steps
        if not len(axes) == len(steps) == len(starts) or len(set(axes)) != len(axes):
            raise ValueError(f"starts, ends, axes and steps must match ({starts}, {ends}, {axes}, {steps})")
        if 0 in steps:
            raise ValueError("a step is 0")
        for a, b, e, s in zip(axes, starts, ends, steps):
            lo, hi, step = slice(b, e, s).indices(x.shape[a])  # ONNX clamps bounds as Python does
            if step > 0:
                x = x[(slice(None),) * a + (slice(lo, hi, step),)]
            else:  # torch slices take positive steps only
                x = x.index_select(a, torch.arange(lo, hi, step, device=x.device))
        return (x,)


@register("Split")
class Split(cpu.Split):
    def __call__(self, x, split=None):
        sizes = self.split if split is None else ints(split)
        axis = normal_axis(self.axis, x.dim())
        n, parts = x.shape[axis], len(self.node.outputs)
        if sizes is None:
            step = -(-n // parts)
            sizes = [min(step, max(n - i * step, 0)) for i in range(parts)]
            if "num_outputs" not in self.attrs and n % parts:
                raise ValueError(f"axis of size {n} does not split into {parts} equal parts")
        if len(sizes) != parts or sum(sizes) != n or min(sizes) < 0:
            raise ValueError(f"split sizes {sizes} do not cut an axis of size {n} into {parts} outputs")
        return tuple(torch.split(x, sizes, axis))


@register("Expand")
class Expand(cpu_gen.Expand):
    """Broadcast in both directions, as numpy does: a view, no copy."""

    def __call__(self, x, shape=None):
        shape = self.shape if shape is None else ints(shape)
        out = torch.broadcast_shapes(x.shape, tuple(shape))
        check_elements(out, "Expand")
        return (x.expand(out),)


@register("Tile")
class Tile(cpu_gen.Tile):
    def __call__(self, x, repeats=None):
        repeats = self.repeats if repeats is None else ints(repeats)
        if len(repeats) != x.dim() or min(repeats, default=0) < 0:
            raise ValueError(f"repeats {repeats} must be {x.dim()} non-negative counts")
        check_elements([d * r for d, r in zip(x.shape, repeats)], "Tile")
        return (x.repeat(repeats) if repeats else x.clone(),)


@register("Trilu")
class Trilu(cpu_index.Trilu):
    def __call__(self, x, k=None):
        if x.dim() < 2:
            raise ValueError(f"input of rank {x.dim()} has no matrix to take a triangle of")
        k = 0 if k is None else int(k.reshape(-1)[0])
        return ((torch.triu if self.attrs.get("upper", 1) else torch.tril)(x, k),)


@register("GatherElements")
class GatherElements(cpu_index.GatherElements):
    def __call__(self, x, indices):
        axis = normal_axis(int(self.attrs.get("axis", 0)), x.dim())
        if indices.dim() != x.dim():
            raise ValueError(f"indices have rank {indices.dim()}, data rank {x.dim()}")
        if any(i > d for a, (i, d) in enumerate(zip(indices.shape, x.shape)) if a != axis):
            raise ValueError(f"indices shape {list(indices.shape)} exceeds data shape {list(x.shape)}")
        n = x.shape[axis]
        indices = indices.long()
        if indices.numel() and bool(((indices < -n) | (indices >= n)).any()):
            raise IndexError(f"GatherElements index out of range [-{n}, {n})")
        return (torch.gather(x, axis, torch.where(indices < 0, indices + n, indices)),)


@register("Constant")
class Constant(cpu_gen.Constant):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.value = torch.as_tensor(np.array(self.value, copy=True), device=ctx.device)  # moved once, at load


@register("ConstantOfShape")
class ConstantOfShape(cpu_gen.ConstantOfShape):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.dtype, self.device = torch_dtype(self.fill.dtype), ctx.device
        self.value = self.fill.item()

    def __call__(self, shape=None):
        shape = self.shape if shape is None else ints(shape)
        check_elements(shape, "ConstantOfShape")
        return (torch.full(shape, self.value, dtype=self.dtype, device=self.device),)


@register("Range")
class Range(cpu_gen.Range):
    def __call__(self, start, limit, delta):
        start, limit, delta = (v.reshape(()) for v in (start, limit, delta))
        if delta == 0:
            raise ValueError("delta is 0")
        n = max(math.ceil((float(limit) - float(start)) / float(delta)), 0)
        check_elements([n], "Range")
        return ((start + torch.arange(n, dtype=start.dtype, device=start.device) * delta).to(start.dtype),)


@register("CastLike")
class CastLike(cpu.CastLike):
    def __call__(self, x, like):
        return (x.to(like.dtype),)
