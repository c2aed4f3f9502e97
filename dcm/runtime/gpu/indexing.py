"""Slicing, splitting, broadcasting and index ops on torch: Slice, Split, Expand, Tile, Trilu,
GatherElements, GatherND, ScatterElements, ScatterND, OneHot, DepthToSpace, SpaceToDepth, Constant,
ConstantOfShape, Range, CastLike. The CPU kernels parse attributes and load-time inputs (subclassed);
indices are range-checked as on the CPU (an IndexError names the node), and output sizes are bounded
before allocating."""
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
        return (torch.gather(x, axis, in_range(indices, x.shape[axis], "GatherElements")),)


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


# ONNX scatter reduction -> torch.scatter_reduce's name (the CPU kernel's ufunc.at, applied in turn)
_SCATTER = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def in_range(idx: torch.Tensor, n, what: str) -> torch.Tensor:
    """``idx`` as int64 with negative entries moved up by ``n`` (an int or a tensor of sizes
    broadcasting against idx); an entry outside [-n, n) is an IndexError, as cpu_index.in_range."""
    idx = idx.long()
    if idx.numel():
        bad = (idx < -n) | (idx >= n)
        if bool(bad.any()):
            raise IndexError(f"{what} index {int(idx[bad].reshape(-1)[0])} is out of range")
    return torch.where(idx < 0, idx + n, idx)


@register("ScatterElements", "Scatter")
class ScatterElements(cpu_index.ScatterElements):
    def __call__(self, x, indices, updates):
        axis = normal_axis(int(self.attrs.get("axis", 0)), x.dim())
        if indices.shape != updates.shape or indices.dim() != x.dim():
            raise ValueError(f"indices {list(indices.shape)} and updates {list(updates.shape)} must match, "
                             f"with the data's rank {x.dim()}")
        if any(i > d for a, (i, d) in enumerate(zip(indices.shape, x.shape)) if a != axis):
            raise ValueError(f"indices shape {list(indices.shape)} exceeds data shape {list(x.shape)}")
        idx = in_range(indices, x.shape[axis], "ScatterElements")
        updates = updates.to(x.dtype)
        reduction = self.attrs.get("reduction", "none")
        if reduction == "none":
            return (x.scatter(axis, idx, updates),)
        return (x.scatter_reduce(axis, idx, updates, _SCATTER[reduction], include_self=True),)


def _nd_positions(x: torch.Tensor, indices: torch.Tensor, batch_dims: int) -> tuple[torch.Tensor, int]:
    """For GatherND/ScatterND: (each index tuple's position in x viewed as [batches * prod(the k
    indexed axes), rest...], k), range-checked as the CPU kernel's ``_nd_index``."""
    b = batch_dims
    k = indices.shape[-1] if indices.dim() else 0
    if indices.dim() < 1 or not 0 <= b < min(x.dim(), indices.dim()) or b + k > x.dim():
        raise ValueError(f"indices of shape {list(indices.shape)} do not index data of rank {x.dim()} "
                         f"with batch_dims {b}")
    if x.shape[:b] != indices.shape[:b]:
        raise ValueError(f"batch dims differ: data {list(x.shape[:b])}, indices {list(indices.shape[:b])}")
    sizes = torch.tensor(x.shape[b:b + k], dtype=torch.int64, device=x.device)
    idx = in_range(indices, sizes, "ND")
    strides = [math.prod(x.shape[b + j + 1:b + k]) for j in range(k)]  # row-major over the k axes
    flat = (idx * torch.tensor(strides, dtype=torch.int64, device=x.device)).sum(-1)
    batches = math.prod(x.shape[:b])
    per_batch = math.prod(x.shape[b:b + k])
    lead = torch.arange(batches, device=x.device).reshape(-1, *([1] * (flat.dim() - b))) * per_batch
    return (flat.reshape(batches, -1) + lead.reshape(batches, 1)).reshape(flat.shape), k


@register("GatherND")
class GatherND(cpu_index.GatherND):
    def __call__(self, x, indices):
        b = int(self.attrs.get("batch_dims", 0))
        pos, k = _nd_positions(x, indices, b)
        rest = x.shape[b + k:]
        out = x.reshape(-1, *rest)[pos.reshape(-1)]
        return (out.reshape(*indices.shape[:-1], *rest),)


@register("ScatterND")
class ScatterND(cpu_index.ScatterND):
    def __call__(self, x, indices, updates):
        pos, k = _nd_positions(x, indices, 0)
        want = (*indices.shape[:-1], *x.shape[k:])
        if tuple(updates.shape) != want:
            raise ValueError(f"updates have shape {list(updates.shape)}, indices and data need {list(want)}")
        rest = math.prod(x.shape[k:])
        out = x.reshape(-1, rest).clone()
        values = updates.to(x.dtype).reshape(-1, rest)
        pos = pos.reshape(-1)
        reduction = self.attrs.get("reduction", "none")
        if reduction == "none":
            out[pos] = values
        else:
            out = out.scatter_reduce(0, pos[:, None].expand(-1, rest), values, _SCATTER[reduction], include_self=True)
        return (out.reshape(x.shape),)


@register("OneHot")
class OneHot(cpu_index.OneHot):
    """An index outside [-depth, depth) gives a row of off values (no error), as ONNX specifies."""

    def __call__(self, indices, depth, values):
        d = int(depth.reshape(-1)[0])
        if d < 1:
            raise ValueError(f"depth {d} must be positive")
        axis = normal_axis(int(self.attrs.get("axis", -1)), indices.dim() + 1)
        check_elements([*indices.shape, d], "OneHot")
        idx = indices.long()
        idx = torch.where(idx < 0, idx + d, idx).unsqueeze(axis)
        positions = torch.arange(d, device=idx.device).reshape([-1 if a == axis else 1 for a in range(idx.dim())])
        off, on = values.reshape(-1)[:2]
        return (torch.where(idx == positions, on, off),)


@register("DepthToSpace")
class DepthToSpace(cpu.DepthToSpace):
    def __call__(self, x):
        b = int(self.attrs.get("blocksize", 0))
        n, c, h, w = x.shape
        if b < 1 or c % (b * b):
            raise ValueError(f"blocksize {b} does not divide {c} channels into b^2 groups")
        if self.attrs.get("mode", "DCR") == "CRD":
            y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
        else:
            y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
        return (y.reshape(n, c // (b * b), h * b, w * b),)


@register("SpaceToDepth")
class SpaceToDepth(cpu.SpaceToDepth):
    def __call__(self, x):
        b = int(self.attrs.get("blocksize", 0))
        n, c, h, w = x.shape
        if b < 1 or h % b or w % b:
            raise ValueError(f"blocksize {b} does not divide the spatial size {h}x{w}")
        perm = (0, 1, 3, 5, 2, 4) if self.attrs.get("mode", "DCR") == "CRD" else (0, 3, 5, 1, 2, 4)
        return (x.reshape(n, c, h // b, b, w // b, b).permute(perm).reshape(n, c * b * b, h // b, w // b),)
