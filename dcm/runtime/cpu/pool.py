"""MaxPool, AveragePool and GlobalAveragePool: the compiled ``pool2d`` for float32 where it was built,
else separable strided reductions in numpy (no loop over pixels)."""
from __future__ import annotations

import numpy as np

from dcm.runtime.cpu import native
from dcm.runtime.cpu.matmul import even_ranges, thread_pool
from dcm.runtime.cpu.registry import register
from dcm.runtime.cpu.windows import ints2, output_size, pads2, reduce_windows, resolve_pads, spatial_2d
from dcm.runtime.kernel import Kernel

SPLIT_MIN_VALUES = 1 << 18  # input values past which the compiled pool splits its planes over the thread pool


class _Pool(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        shape = self.attrs["kernel_shape"]
        self.nd = len(shape)
        self.kernel = ints2(self.attrs, "kernel_shape", self.nd, 1)
        self.strides = ints2(self.attrs, "strides", self.nd, 1)
        self.dilations = ints2(self.attrs, "dilations", self.nd, 1)
        self.ceil = bool(self.attrs.get("ceil_mode", 0))
        self.pad_attrs = pads2(self.attrs, self.nd)
        self.threads = ctx.threads
        self.quiet = native.pool2d is not None  # compiled (the numpy average can warn on inf - inf)

    def _pads(self, x):
        return resolve_pads(self.pad_attrs, x.shape[2:], self.kernel, self.strides, self.dilations, self.ceil)

    def _native(self, x: np.ndarray, begin: list[int], end: list[int], divisor: np.ndarray | None) -> np.ndarray:
        """The compiled pool (max, or average with ``divisor`` [OH * OW]); planes split over the thread
        pool for large inputs."""
        x = np.ascontiguousarray(x)
        n, c = x.shape[:2]
        oh, ow = output_size(x.shape[2:], self.kernel, self.strides, self.dilations, begin, end)
        y = np.empty((n, c, oh, ow), dtype=np.float32)
        args = (x, y, x.shape, self.kernel, self.strides, self.dilations, (begin[0], begin[1], end[0], end[1]),
                divisor)
        planes = n * c
        if self.threads < 2 or x.size < SPLIT_MIN_VALUES or planes < self.threads:
            native.pool2d(*args)
        else:
            list(thread_pool(self.threads).map(lambda r: native.pool2d(*args, *r), even_ranges(planes, self.threads)))
        return y


@register("MaxPool")
class MaxPool(_Pool):
    def __call__(self, x):
        x, was_1d = spatial_2d(x)
        begin, end = self._pads(x)
        if native.pool2d is not None and x.dtype == np.float32:
            y = self._native(x, begin, end, None)
        else:
            y = reduce_windows(x, self.kernel, self.strides, self.dilations, begin, end, np.maximum, -np.inf)
        return (y[:, :, 0, :] if was_1d else y,)


@register("AveragePool")
class AveragePool(_Pool):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self._divisor: dict = {}

    def __call__(self, x):
        x, was_1d = spatial_2d(x)
        begin, end = self._pads(x)
        key = (x.shape[2:], tuple(begin), tuple(end))
        if key not in self._divisor:  # the same for every run at one input size: keep the last one
            self._divisor = {key: self.divisor(x.shape[2:], begin, end)}
        divisor = self._divisor[key]
        if native.pool2d is not None:
            y = self._native(x.astype(np.float32, copy=False), begin, end, divisor.reshape(-1))
        else:
            y = reduce_windows(x.astype(np.float32, copy=False), self.kernel, self.strides, self.dilations, begin, end,
                               np.add)
            np.divide(y, divisor, out=y)
        return (y[:, :, 0, :] if was_1d else y,)

    def divisor(self, spatial: tuple[int, int], begin: list[int], end: list[int]) -> np.ndarray:
        """Elements averaged per output [1, 1, OH, OW]: explicit pads count with count_include_pad,
        the ceil-mode overhang never does."""
        ones = np.ones((1, 1) + tuple(spatial), dtype=np.float32)
        if self.attrs.get("count_include_pad", 0):
            b0, e0 = resolve_pads(self.pad_attrs, spatial, self.kernel, self.strides, self.dilations)
            ones = np.pad(ones, ((0, 0), (0, 0), (b0[0], e0[0]), (b0[1], e0[1])), constant_values=1.0)
            begin = [b - p for b, p in zip(begin, b0)]
            end = [e - p for e, p in zip(end, e0)]
        return reduce_windows(ones, self.kernel, self.strides, self.dilations, begin, end, np.add)


@register("GlobalAveragePool")
class GlobalAveragePool(Kernel):
    def __call__(self, x):
        return (x.mean(axis=tuple(range(2, x.ndim)), keepdims=True, dtype=np.float32),)


@register("GlobalMaxPool")
class GlobalMaxPool(Kernel):
    def __call__(self, x):
        return (x.max(axis=tuple(range(2, x.ndim)), keepdims=True),)
