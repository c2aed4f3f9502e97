"""Reductions (ReduceSum, ReduceMean, ... ReduceLogSumExp), ArgMax / ArgMin, CumSum, CumProd and TopK.

The Reduce ops take their axes as an attribute in older opsets and as an input in newer ones
(ReduceSum from 13, the others from 18), constant or computed at run time. No axes means every
axis, or none with ``noop_with_empty_axes`` (numpy's ``axis=()``: ReduceSumSquare then squares).
Results keep the input's type; a reduction over an empty set gives its identity (0 for sums, 1 for
products, -inf for a max, ...).
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numpy.lib.array_utils import normalize_axis_index, normalize_axis_tuple

from dcm.runtime.cpu.registry import register
from dcm.runtime.kernel import Kernel

Axes = tuple[int, ...] | None  # None: every axis; (): none


MAX_AXES = 64  # more axes than any tensor has (the load-time checks bound ranks the same way)


def _ints(value, what: str) -> list[int]:
    """A small 0-D or 1-D integer tensor (axes, k) as ints."""
    a = np.asarray(value)
    if a.dtype.kind not in "iu" or a.ndim > 1 or a.size > MAX_AXES:
        raise ValueError(f"{what} must be a 0-D or 1-D integer tensor of at most {MAX_AXES} values, "
                         f"got {a.dtype} of shape {list(a.shape)}")
    return a.ravel().tolist()


def _one_int(value, what: str) -> int:
    ints = _ints(value, what)
    if len(ints) != 1:
        raise ValueError(f"{what} must hold exactly one value, got {len(ints)}")
    return ints[0]


def _lowest(dtype: np.dtype):
    """The identity of max over dtype (the result of a max over an empty set)."""
    if dtype.kind == "f":
        return -np.inf
    return False if dtype.kind == "b" else np.iinfo(dtype).min


def _highest(dtype: np.dtype):
    if dtype.kind == "f":
        return np.inf
    return True if dtype.kind == "b" else np.iinfo(dtype).max


class _Reduce(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.keep = bool(self.attrs.get("keepdims", 1))
        self.noop_empty = bool(self.attrs.get("noop_with_empty_axes", 0))
        self.axes: list[int] | None = self.attrs.get("axes", [])  # None: the run-time input
        if len(node.inputs) > 1 and node.inputs[1]:
            if ctx.is_const(node.inputs[1]):
                self.axes = _ints(ctx.const(node.inputs[1]), "axes")
                self.weight_inputs = (1,)
            else:
                self.axes = None

    def __call__(self, x, axes=None):
        axes = self.axes if self.axes is not None else _ints(axes, "axes")
        if axes:
            axes = normalize_axis_tuple(axes, x.ndim)
        else:  # noop_with_empty_axes: a reduction over no axis, whose other steps still apply (ReduceL1: |x|)
            axes = () if self.noop_empty else None
        y = self.reduce(x, axes)
        return (np.asarray(y, dtype=x.dtype),)  # a 0-D array, not the numpy scalar a full reduction gives

    def reduce(self, x: np.ndarray, axes: Axes) -> np.ndarray:
        raise NotImplementedError


BLAS_SUM_MIN, BLAS_SUM_MAX = 16, 1 << 16  # values per row that sum_trailing takes to BLAS


@functools.cache
def _ones(n: int) -> np.ndarray:
    ones = np.ones(n, np.float32)
    ones.flags.writeable = False
    return ones


def sum_trailing(x: np.ndarray, axes: Axes, keep: bool) -> np.ndarray | None:
    """The sum of a float32 C-contiguous x over its last axes as one BLAS matrix-vector product with
    ones, or None where that does not apply. numpy's strided sum over a [1, 96, 56, 56] tensor's
    planes took 64-69 us, the product 17 (onnxruntime's ReduceMean 34): the squeeze of every
    squeeze-and-excitation block and GlobalAveragePool. Rows up to 2^16 values, where the product's
    float32 sums stay as accurate as numpy's pairwise ones for any test here (error ~1e-7 relative)."""
    if x.dtype != np.float32 or not x.flags.c_contiguous or not axes or x.size == 0:
        return None
    lead = x.ndim - len(axes)
    n = math.prod(x.shape[lead:])
    if tuple(axes) != tuple(range(lead, x.ndim)) or not BLAS_SUM_MIN <= n <= BLAS_SUM_MAX:
        return None
    y = x.reshape(-1, n) @ _ones(n)  # [rows, n] @ [n]
    return y.reshape(x.shape[:lead] + (1,) * len(axes) if keep else x.shape[:lead])


@register("ReduceSum")
class ReduceSum(_Reduce):
    def reduce(self, x, axes):
        fast = sum_trailing(x, axes, self.keep)
        return fast if fast is not None else np.sum(x, axis=axes, keepdims=self.keep, dtype=x.dtype)


@register("ReduceMean")
class ReduceMean(_Reduce):
    def reduce(self, x, axes):
        # The sum over the count, not np.mean: the mean of an empty set is then a quiet NaN (0 / 0
        # under the session's errstate) instead of np.mean's Python warning. float16 sums in float32.
        count = x.size if axes is None else math.prod(x.shape[a] for a in axes)
        fast = sum_trailing(x, axes, self.keep)
        if fast is not None:
            return fast / count
        return np.sum(x, axis=axes, keepdims=self.keep, dtype=np.float32 if x.dtype == np.float16 else None) / count


@register("ReduceMax")
class ReduceMax(_Reduce):
    quiet = True

    def reduce(self, x, axes):
        empty = {"initial": _lowest(x.dtype)} if x.size == 0 else {}  # numpy refuses an empty max otherwise
        return np.max(x, axis=axes, keepdims=self.keep, **empty)


@register("ReduceMin")
class ReduceMin(_Reduce):
    quiet = True

    def reduce(self, x, axes):
        empty = {"initial": _highest(x.dtype)} if x.size == 0 else {}
        return np.min(x, axis=axes, keepdims=self.keep, **empty)


@register("ReduceProd")
class ReduceProd(_Reduce):
    def reduce(self, x, axes):
        return np.prod(x, axis=axes, keepdims=self.keep, dtype=x.dtype)


@register("ReduceL1")
class ReduceL1(_Reduce):
    def reduce(self, x, axes):
        return np.sum(np.abs(x), axis=axes, keepdims=self.keep, dtype=x.dtype)


@register("ReduceL2")
class ReduceL2(_Reduce):
    def reduce(self, x, axes):
        return np.sqrt(np.sum(np.square(x), axis=axes, keepdims=self.keep, dtype=x.dtype))


@register("ReduceSumSquare")
class ReduceSumSquare(_Reduce):
    def reduce(self, x, axes):
        return np.sum(np.square(x), axis=axes, keepdims=self.keep, dtype=x.dtype)


@register("ReduceLogSum")
class ReduceLogSum(_Reduce):
    def reduce(self, x, axes):
        return np.log(np.sum(x, axis=axes, keepdims=self.keep, dtype=x.dtype))


@register("ReduceLogSumExp")
class ReduceLogSumExp(_Reduce):
    """log(sum(exp(x - m))) + m with m the (finite) max: no overflow for large x."""

    def reduce(self, x, axes):
        xf = x if x.dtype.kind == "f" else x.astype(np.float64)
        m = np.max(xf, axis=axes, keepdims=True, initial=-np.inf)
        m[~np.isfinite(m)] = 0
        s = np.sum(np.exp(xf - m), axis=axes, keepdims=self.keep)
        return np.log(s) + m.reshape(s.shape)


class _ArgExtreme(Kernel):
    """Index (int64) of the first extreme along ``axis``, or of the last with ``select_last_index``."""

    quiet = True
    fn = staticmethod(np.argmax)

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = int(self.attrs.get("axis", 0))
        self.keep = bool(self.attrs.get("keepdims", 1))
        self.last = bool(self.attrs.get("select_last_index", 0))

    def __call__(self, x):
        axis = normalize_axis_index(self.axis, x.ndim)
        if self.last:
            i = x.shape[axis] - 1 - self.fn(np.flip(x, axis), axis=axis, keepdims=self.keep)
        else:
            i = self.fn(x, axis=axis, keepdims=self.keep)
        return (i.astype(np.int64, copy=False),)


@register("ArgMax")
class ArgMax(_ArgExtreme):
    fn = staticmethod(np.argmax)


@register("ArgMin")
class ArgMin(_ArgExtreme):
    fn = staticmethod(np.argmin)


class _Cumulative(Kernel):
    """A running reduction (``fn``: np.cumsum, np.cumprod) along the (constant or run-time) ``axis``
    input, in the input's type; ``exclusive`` leaves each element out of its own result (the first
    is the reduction's ``identity``), ``reverse`` runs from the end."""

    fn = staticmethod(np.cumsum)
    identity = 0

    def __call__(self, x, axis):
        axis = normalize_axis_index(_one_int(axis, "axis"), x.ndim)
        reverse = bool(self.attrs.get("reverse", 0))
        y = self.fn(np.flip(x, axis) if reverse else x, axis=axis, dtype=x.dtype)
        if self.attrs.get("exclusive", 0):  # shifted by one place: exact, unlike y - x or y / x
            shifted = np.full_like(y, self.identity)
            dst, src = [slice(None)] * x.ndim, [slice(None)] * x.ndim
            dst[axis], src[axis] = slice(1, None), slice(None, -1)
            shifted[tuple(dst)] = y[tuple(src)]
            y = shifted
        return (np.flip(y, axis) if reverse else y,)


@register("CumSum")
class CumSum(_Cumulative):
    pass


@register("CumProd")
class CumProd(_Cumulative):
    fn = staticmethod(np.cumprod)
    identity = 1


def _sorted_order(x: np.ndarray, largest: bool) -> np.ndarray:
    """Positions along the last axis of ``x`` in sorted order, equal values in increasing position."""
    if not largest:
        return np.argsort(x, axis=-1, kind="stable")
    # A stable ascending sort of the reversed axis, read backwards: descending values, equal ones in
    # increasing position. (Negating the values instead would overflow the lowest integer and mangle
    # unsigned ones.)
    return x.shape[-1] - 1 - np.flip(np.argsort(np.flip(x, -1), axis=-1, kind="stable"), -1)


def _top_k(x: np.ndarray, k: int, largest: bool) -> np.ndarray:
    """Positions of the k largest (smallest) values in each row of the matrix ``x``, in order.

    For k small against the row, a partition finds each row's k-th value v in linear time; the
    values beyond v and the first equal ones up to k are the answer, and only they are sorted
    (128 x 768 values, k = 5: 20 -> 2 ms). NaN has no place in that comparison: rows with NaN
    take the full sort, which ranks NaN above every number as np.sort does."""
    rows, n = x.shape
    if k == 0:
        return np.zeros((rows, 0), dtype=np.intp)
    if 4 * k >= n or x.size == 0 or (x.dtype.kind == "f" and np.isnan(x.max())):  # (max: NaN if any is)
        return _sorted_order(x, largest)[:, :k]
    kth = np.partition(x, n - k if largest else k - 1, axis=1)[:, n - k if largest else k - 1, None]
    chosen = x > kth if largest else x < kth
    equal = x == kth
    needed = k - np.count_nonzero(chosen, axis=1, keepdims=True)
    if np.any(np.count_nonzero(equal, axis=1, keepdims=True) > needed):  # more ties than places: the first ones
        equal &= np.cumsum(equal, axis=1, dtype=np.int32) <= needed
    chosen |= equal  # exactly k per row, in position order
    positions = np.nonzero(chosen)[1].reshape(rows, k)
    return np.take_along_axis(positions, _sorted_order(np.take_along_axis(x, positions, 1), largest), 1)


@register("TopK")
class TopK(Kernel):
    """The k largest (or smallest) values along ``axis`` and their int64 indices, sorted, equal
    values in index order (as ONNX requires). k is an attribute before opset 10, an input after."""

    quiet = True

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = int(self.attrs.get("axis", -1))
        self.largest = bool(self.attrs.get("largest", 1))
        self.k = self.attrs.get("k")

    def __call__(self, x, k=None):
        k = self.k if k is None else _one_int(k, "k")
        if k is None:
            raise ValueError("k is missing (neither the attribute nor the input is given)")
        axis = normalize_axis_index(self.axis, x.ndim)
        n = x.shape[axis]
        if not 0 <= k <= n:
            raise ValueError(f"k = {k} is outside 0..{n}, the size of axis {axis}")
        rows = np.moveaxis(x, axis, -1)
        indices = _top_k(rows.reshape(math.prod(rows.shape[:-1]), n), k, self.largest).reshape(rows.shape[:-1] + (k,))
        indices = np.moveaxis(indices, -1, axis)
        return np.take_along_axis(x, indices, axis), indices.astype(np.int64, copy=False)
