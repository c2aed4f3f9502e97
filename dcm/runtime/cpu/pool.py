"""MaxPool, AveragePool, LpPool and the global pools: the compiled ``pool2d`` for 1-D and 2-D float32
where it was built, else separable strided reductions in numpy (any number of spatial axes, no loop
over pixels). MaxPool's optional Indices output gathers through the window view; MaxUnpool scatters
values back to those indices."""
from __future__ import annotations

import math

import numpy as np

from dcm.errors import UnsupportedOpError
from dcm.runtime.cpu import native
from dcm.runtime.cpu.reduce import sum_trailing
from dcm.runtime.cpu.registry import register
from dcm.runtime.cpu.shape import check_elements
from dcm.runtime.cpu.windows import (axis_ints, ints2, output_size, pads2, reduce_windows, resolve_pads, spatial_2d,
                                      windows)
from dcm.runtime.kernel import Kernel


class _Pool(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        shape = self.attrs["kernel_shape"]
        self.nd = len(shape)
        if self.nd > 2:  # 3-D and up: numpy only, on the input's own layout
            self.kernel = tuple(shape)
            self.strides = tuple(axis_ints(self.attrs, "strides", self.nd, 1))
            self.dilations = tuple(axis_ints(self.attrs, "dilations", self.nd, 1))
            self.pad_attrs = self.attrs
        else:
            self.kernel = ints2(self.attrs, "kernel_shape", self.nd, 1)
            self.strides = ints2(self.attrs, "strides", self.nd, 1)
            self.dilations = ints2(self.attrs, "dilations", self.nd, 1)
            self.pad_attrs = pads2(self.attrs, self.nd)
        self.ceil = bool(self.attrs.get("ceil_mode", 0))
        self.compiled = native.pool2d is not None and self.nd <= 2
        self.quiet = self.compiled  # compiled (the numpy average can warn on inf - inf)

    def _layout(self, x: np.ndarray) -> tuple[np.ndarray, bool]:
        """(x on the layout the kernel works on, whether it was a 1-D input lifted to 2-D)."""
        if self.nd > 2:
            if x.ndim != self.nd + 2:
                raise ValueError(f"input of rank {x.ndim} for a {self.nd}-D kernel_shape")
            return x, False
        return spatial_2d(x)

    def _pads(self, x):
        return resolve_pads(self.pad_attrs, x.shape[2:], self.kernel, self.strides, self.dilations, self.ceil)

    def _native(self, x: np.ndarray, begin: list[int], end: list[int], divisor: np.ndarray | None) -> np.ndarray:
        """The compiled pool (max, or average with ``divisor`` [OH * OW]); it splits its output rows
        over the native thread pool where they are enough work."""
        x = np.ascontiguousarray(x)
        n, c = x.shape[:2]
        oh, ow = output_size(x.shape[2:], self.kernel, self.strides, self.dilations, begin, end)
        y = np.empty((n, c, oh, ow), dtype=np.float32)
        native.pool2d(x, y, x.shape, self.kernel, self.strides, self.dilations, (begin[0], begin[1], end[0], end[1]),
                      divisor, self.threads)
        return y


@register("MaxPool")
class MaxPool(_Pool):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.indices = len(node.outputs) > 1 and bool(node.outputs[1])
        self.column_major = bool(self.attrs.get("storage_order", 0))

    def __call__(self, x):
        x, was_1d = self._layout(x)
        begin, end = self._pads(x)
        low = -np.inf if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min
        if self.indices:
            y, i = self._with_indices(x, begin, end, low)
            return (y[:, :, 0, :], i[:, :, 0, :]) if was_1d else (y, i)
        if self.compiled and x.dtype == np.float32:
            y = self._native(x, begin, end, None)
        else:
            y = reduce_windows(x, self.kernel, self.strides, self.dilations, begin, end, np.maximum, low)
        return (y[:, :, 0, :] if was_1d else y,)

    def _with_indices(self, x: np.ndarray, begin: list[int], end: list[int], low) -> tuple[np.ndarray, np.ndarray]:
        """Max and its flat index into x (over N, C and the spatial axes; spatial axes column-major
        with storage_order=1), the first of equal maxima in window order, as onnx's reference."""
        n, c = x.shape[:2]
        spatial = x.shape[2:]
        v = windows(x, self.kernel, self.strides, self.dilations, begin, end, fill=low)  # [N, C, *out, *kernel]
        out = v.shape[2 : 2 + len(spatial)]
        taps = int(np.prod(self.kernel))
        check_elements([n, c, *out, taps], "MaxPool windows")
        flat = v.reshape(n, c, *out, taps)
        best = flat.argmax(axis=-1)[..., None]
        y = np.take_along_axis(flat, best, axis=-1)[..., 0]
        order = "F" if self.column_major else "C"
        positions = np.arange(int(np.prod(spatial)), dtype=np.int64).reshape(spatial, order=order)
        where = windows(positions[None, None], self.kernel, self.strides, self.dilations, begin, end, fill=-1)
        where = np.broadcast_to(where.reshape(1, 1, *out, taps), flat.shape)
        index = np.take_along_axis(where, best, axis=-1)[..., 0]
        plane = (np.arange(n * c, dtype=np.int64) * int(np.prod(spatial))).reshape((n, c) + (1,) * len(out))
        return y, index + plane


@register("AveragePool")
class AveragePool(_Pool):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self._divisor: dict = {}

    def __call__(self, x):
        x, was_1d = self._layout(x)
        begin, end = self._pads(x)
        key = (x.shape[2:], tuple(begin), tuple(end))
        if key not in self._divisor:  # the same for every run at one input size: keep the last one
            self._divisor = {key: self.divisor(x.shape[2:], begin, end)}
        divisor = self._divisor[key]
        if self.compiled:
            y = self._native(x.astype(np.float32, copy=False), begin, end, divisor.reshape(-1))
        else:
            y = reduce_windows(x.astype(np.float32, copy=False), self.kernel, self.strides, self.dilations, begin, end,
                               np.add)
            np.divide(y, divisor, out=y)
        return (y[:, :, 0, :] if was_1d else y,)

    def divisor(self, spatial: tuple[int, ...], begin: list[int], end: list[int]) -> np.ndarray:
        """Elements averaged per output [1, 1, *out]: explicit pads count with count_include_pad,
        the ceil-mode overhang never does."""
        ones = np.ones((1, 1) + tuple(spatial), dtype=np.float32)
        if self.attrs.get("count_include_pad", 0):
            b0, e0 = resolve_pads(self.pad_attrs, spatial, self.kernel, self.strides, self.dilations)
            ones = np.pad(ones, ((0, 0), (0, 0), *zip(b0, e0)), constant_values=1.0)
            begin = [b - p for b, p in zip(begin, b0)]
            end = [e - p for e, p in zip(end, e0)]
        return reduce_windows(ones, self.kernel, self.strides, self.dilations, begin, end, np.add)


@register("LpPool")
class LpPool(_Pool):
    """(sum of |x|^p over each window)^(1/p); padding adds zeros."""

    def __call__(self, x):
        x, was_1d = self._layout(x)
        begin, end = self._pads(x)
        p = float(self.attrs.get("p", 2))
        x = np.asarray(x, dtype=np.float32)
        powered = x * x if p == 2 else np.abs(x) ** np.float32(p)
        y = reduce_windows(powered, self.kernel, self.strides, self.dilations, begin, end, np.add)
        y = np.sqrt(y) if p == 2 else y ** np.float32(1 / p)
        return (y[:, :, 0, :] if was_1d else y,)


@register("MaxUnpool")
class MaxUnpool(Kernel):
    """Each value written at its flat index (MaxPool's Indices) in a zero array of the size the
    pooling came from, (in - 1) * stride + kernel - pads; an ``output_shape`` input gets that array in
    its leading corner, as onnx's reference (and its node cases) place it."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        if "kernel_shape" not in self.attrs:
            raise UnsupportedOpError(f"MaxUnpool {node.name!r}: required attribute 'kernel_shape' is missing")

    def __call__(self, x, indices, output_shape=None):
        nd = x.ndim - 2
        kernel = axis_ints(self.attrs, "kernel_shape", nd, 1)
        strides = axis_ints(self.attrs, "strides", nd, 1)
        pads = list(self.attrs.get("pads", [0] * 2 * nd))
        if len(pads) != 2 * nd:
            raise ValueError(f"pads has {len(pads)} values for {nd} spatial axes")
        shape = [*x.shape[:2], *((d - 1) * s + k - pads[i] - pads[nd + i]
                                 for i, (d, s, k) in enumerate(zip(x.shape[2:], strides, kernel)))]
        check_elements(shape, "MaxUnpool output")
        indices = np.asarray(indices)
        if indices.shape != x.shape or not np.issubdtype(indices.dtype, np.integer):
            raise ValueError(f"indices of shape {list(indices.shape)} ({indices.dtype}), expected {list(x.shape)}")
        y = np.zeros(int(np.prod(shape)), dtype=x.dtype)
        if indices.size and (indices.min() < 0 or indices.max() >= y.size):
            raise IndexError(f"an index is outside the output of {y.size} elements")
        y[indices.reshape(-1)] = x.reshape(-1)
        y = y.reshape(shape)
        if output_shape is None:
            return (y,)
        target = [int(v) for v in np.asarray(output_shape).reshape(-1)]
        if len(target) != x.ndim or target[:2] != list(x.shape[:2]):
            raise ValueError(f"output_shape {target} does not fit an input of shape {list(x.shape)}")
        check_elements(target, "MaxUnpool output")
        out = np.zeros(target, dtype=x.dtype)
        corner = tuple(slice(0, min(a, b)) for a, b in zip(shape, target))
        out[corner] = y[corner]
        return (out,)


@register("GlobalAveragePool")
class GlobalAveragePool(Kernel):
    def __call__(self, x):
        axes = tuple(range(2, x.ndim))
        fast = sum_trailing(x, axes, True)
        if fast is not None:
            return (fast / math.prod(x.shape[2:]),)
        return (x.mean(axis=axes, keepdims=True, dtype=np.float32),)


@register("GlobalMaxPool")
class GlobalMaxPool(Kernel):
    def __call__(self, x):
        return (x.max(axis=tuple(range(2, x.ndim)), keepdims=True),)
