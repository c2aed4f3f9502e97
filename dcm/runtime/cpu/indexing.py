"""Index ops: GatherElements, GatherND, ScatterElements, ScatterND, OneHot, Trilu, and the ops whose
output size depends on the data: NonZero, Compress, Unique; ReverseSequence.

Indices come from the graph (often from user data), so every one is range-checked: an index outside
[-n, n) is an error naming the node (the session adds the name), never a wrap or a crash.
Negative indices count from the end, as ONNX says.
"""
from __future__ import annotations

import numpy as np

from dcm.errors import UnsupportedOpError
from dcm.runtime.cpu.shape import check_elements, normal_axis
from dcm.runtime.cpu.registry import register
from dcm.runtime.kernel import Kernel

# Scatter reductions (opset 16: add, mul; 18: max, min): ufunc.at applies repeated indices in turn.
REDUCTIONS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def in_range(idx: np.ndarray, n, what: str) -> np.ndarray:
    """``idx`` as int64 with negative entries moved up by ``n`` (an int, or sizes broadcasting
    against idx); an entry outside [-n, n) is an IndexError."""
    idx = np.asarray(idx).astype(np.int64, copy=False)
    if idx.size and (np.any(idx < -np.asarray(n)) or np.any(idx >= n)):
        bad = idx[(idx < -np.asarray(n)) | (idx >= n)].ravel()[0]
        raise IndexError(f"{what} index {int(bad)} is out of range")
    return np.where(idx < 0, idx + n, idx)


def _reduction(kernel: Kernel):
    r = kernel.attrs.get("reduction", "none")
    if r != "none" and r not in REDUCTIONS:
        raise UnsupportedOpError(f"{kernel.node.op} {kernel.node.name!r}: reduction {r!r} is not supported")
    return REDUCTIONS.get(r)


def _element_index(indices: np.ndarray, axis: int) -> tuple:
    """The fancy index that takes, at each position of ``indices``, the entry its value names on
    ``axis`` and its own position on every other axis."""
    grid = list(np.indices(indices.shape, sparse=True))
    grid[axis] = indices
    return tuple(grid)


@register("GatherElements")
class GatherElements(Kernel):
    quiet = True

    def __call__(self, x, indices):
        axis = normal_axis(int(self.attrs.get("axis", 0)), x.ndim)
        if indices.ndim != x.ndim:
            raise ValueError(f"indices have rank {indices.ndim}, data rank {x.ndim}")
        if any(i > d for a, (i, d) in enumerate(zip(indices.shape, x.shape)) if a != axis):
            raise ValueError(f"indices shape {list(indices.shape)} exceeds data shape {list(x.shape)}")
        return (x[_element_index(in_range(indices, x.shape[axis], "GatherElements"), axis)],)


@register("ScatterElements", "Scatter")
class ScatterElements(Kernel):

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.reduce = _reduction(self)

    def __call__(self, x, indices, updates):
        axis = normal_axis(int(self.attrs.get("axis", 0)), x.ndim)
        if indices.shape != updates.shape or indices.ndim != x.ndim:
            raise ValueError(f"indices {list(indices.shape)} and updates {list(updates.shape)} must match, "
                             f"with the data's rank {x.ndim}")
        if any(i > d for a, (i, d) in enumerate(zip(indices.shape, x.shape)) if a != axis):
            raise ValueError(f"indices shape {list(indices.shape)} exceeds data shape {list(x.shape)}")
        where = _element_index(in_range(indices, x.shape[axis], "ScatterElements"), axis)
        out = x.copy()
        if self.reduce is None:
            out[where] = updates
        else:
            self.reduce.at(out, where, updates.astype(out.dtype, copy=False))
        return (out,)


def _nd_index(x: np.ndarray, indices: np.ndarray, batch_dims: int) -> tuple[tuple, tuple]:
    """For GatherND/ScatterND: (the fancy index into ``x`` flattened over its batch dims, the shape of
    that view). indices [..., k] name the first k axes after the batch dims."""
    b = batch_dims
    k = indices.shape[-1] if indices.ndim else 0
    if indices.ndim < 1 or not 0 <= b < min(x.ndim, indices.ndim) or b + k > x.ndim:
        raise ValueError(f"indices of shape {list(indices.shape)} do not index data of rank {x.ndim} "
                         f"with batch_dims {b}")
    if x.shape[:b] != indices.shape[:b]:
        raise ValueError(f"batch dims differ: data {list(x.shape[:b])}, indices {list(indices.shape[:b])}")
    sizes = np.array(x.shape[b:b + k], dtype=np.int64)
    idx = in_range(indices, sizes, "ND")
    batches = int(np.prod(x.shape[:b], dtype=np.int64))
    idx = idx.reshape(batches, -1, k)
    lead = np.arange(batches).reshape(-1, 1)
    return (lead, *np.moveaxis(idx, -1, 0)), (batches, *x.shape[b:])


@register("GatherND")
class GatherND(Kernel):
    quiet = True

    def __call__(self, x, indices):
        b = int(self.attrs.get("batch_dims", 0))
        where, view = _nd_index(x, indices, b)
        out = x.reshape(view)[where]
        return (out.reshape(*indices.shape[:-1], *x.shape[b + indices.shape[-1]:]),)


@register("ScatterND")
class ScatterND(Kernel):

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.reduce = _reduction(self)

    def __call__(self, x, indices, updates):
        where, view = _nd_index(x, indices, 0)
        k = indices.shape[-1]
        want = (*indices.shape[:-1], *x.shape[k:])
        if updates.shape != want:
            raise ValueError(f"updates have shape {list(updates.shape)}, indices and data need {list(want)}")
        out = x.copy()
        flat = out.reshape(view)
        values = updates.reshape(1, -1, *x.shape[k:]).astype(out.dtype, copy=False)
        if self.reduce is None:
            flat[where] = values
        else:
            self.reduce.at(flat, where, values)
        return (out,)


@register("OneHot")
class OneHot(Kernel):
    """As ONNX specifies, an index outside [-depth, depth) gives a row of off values (no error)."""

    quiet = True

    def __call__(self, indices, depth, values):
        d = int(depth.reshape(-1)[0])
        if d < 1:
            raise ValueError(f"depth {d} must be positive")
        axis = normal_axis(int(self.attrs.get("axis", -1)), indices.ndim + 1)
        check_elements([*indices.shape, d], "OneHot")
        idx = np.asarray(indices).astype(np.int64)
        idx = np.expand_dims(np.where(idx < 0, idx + d, idx), axis)
        hot = idx == np.arange(d).reshape([-1 if a == axis else 1 for a in range(indices.ndim + 1)])
        off, on = values.reshape(-1)[:2]
        return (np.where(hot, on, off).astype(values.dtype),)


@register("Trilu")
class Trilu(Kernel):
    """Keep the upper (``upper``=1) or lower triangle of the last two axes, shifted by diagonal k."""

    quiet = True

    def __call__(self, x, k=None):
        if x.ndim < 2:
            raise ValueError(f"input of rank {x.ndim} has no matrix to take a triangle of")
        k = 0 if k is None else int(k.reshape(-1)[0])
        return ((np.triu if self.attrs.get("upper", 1) else np.tril)(x, k),)


@register("NonZero")
class NonZero(Kernel):
    """The indices of the non-zero elements, [rank, count] int64 in row-major order (a scalar: [0, 0 or 1])."""

    quiet = True

    def __call__(self, x):
        if x.ndim == 0:
            return (np.zeros((0, int(bool(x))), np.int64),)
        return (np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1),)


@register("Compress")
class Compress(Kernel):
    """The slices of x along ``axis`` (of the flattened x without one) whose condition is true; a
    condition shorter than the axis selects among its first slices only, as numpy's compress does."""

    quiet = True

    def __call__(self, x, condition):
        axis = self.attrs.get("axis")
        if condition.ndim != 1:
            raise ValueError(f"condition of rank {condition.ndim}, a vector expected")
        n = x.size if axis is None else x.shape[normal_axis(int(axis), x.ndim)]
        if condition.size > n:
            raise ValueError(f"condition of {condition.size} values for an axis of {n}")
        return (np.compress(condition.astype(bool), x, axis=None if axis is None else int(axis)),)


@register("ReverseSequence")
class ReverseSequence(Kernel):
    """Each batch entry's first sequence_lens[b] steps along ``time_axis`` in reverse order, the rest as they are."""

    quiet = True

    def __call__(self, x, lens):
        t_axis = normal_axis(int(self.attrs.get("time_axis", 0)), x.ndim)
        b_axis = normal_axis(int(self.attrs.get("batch_axis", 1)), x.ndim)
        if t_axis == b_axis or x.ndim < 2:
            raise ValueError("time_axis and batch_axis must be two different axes of a rank-2+ input")
        steps, batch = x.shape[t_axis], x.shape[b_axis]
        lens = np.asarray(lens, dtype=np.int64).reshape(-1)
        if lens.size != batch or np.any((lens < 0) | (lens > steps)):
            raise ValueError(f"sequence_lens {lens.tolist()[:8]} must hold {batch} lengths in [0, {steps}]")
        t = np.arange(steps)[:, None]
        order = np.where(t < lens[None, :], lens[None, :] - 1 - t, t)  # [steps, batch]: the step each takes
        shape = [1] * x.ndim
        shape[t_axis], shape[b_axis] = steps, batch
        index = order if t_axis < b_axis else order.T
        return (np.take_along_axis(x, index.reshape(shape), axis=t_axis),)


@register("Unique")
class Unique(Kernel):
    """The distinct values (or slices along ``axis``), sorted or in order of first appearance
    (``sorted`` = 0), with the index of each one's first appearance, each input element's place among
    them, and their counts (int64)."""

    quiet = True

    def __call__(self, x):
        axis = self.attrs.get("axis")
        axis = None if axis is None else normal_axis(int(axis), x.ndim)
        values, first, inverse, counts = np.unique(x, return_index=True, return_inverse=True, return_counts=True,
                                                   axis=axis)
        inverse = inverse.reshape(-1)
        if not self.attrs.get("sorted", 1):
            order = np.argsort(first, kind="stable")
            rank = np.empty_like(order)
            rank[order] = np.arange(order.size)
            values = np.take(values, order, axis=0 if axis is None else axis)
            first, inverse, counts = first[order], rank[inverse], counts[order]
        return values, first.astype(np.int64), inverse.astype(np.int64), counts.astype(np.int64)
