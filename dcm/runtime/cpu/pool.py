"""MaxPool, AveragePool and GlobalAveragePool as separable strided reductions (no loop over pixels)."""
from __future__ import annotations

import numpy as np

from dcm.runtime.cpu.registry import register
from dcm.runtime.cpu.windows import ints2, pads2, reduce_windows, resolve_pads, spatial_2d
from dcm.runtime.kernel import Kernel


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

    def _pads(self, x):
        return resolve_pads(self.pad_attrs, x.shape[2:], self.kernel, self.strides, self.dilations, self.ceil)


@register("MaxPool")
class MaxPool(_Pool):
    def __call__(self, x):
        x, was_1d = spatial_2d(x)
        begin, end = self._pads(x)
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
        y = reduce_windows(x.astype(np.float32, copy=False), self.kernel, self.strides, self.dilations, begin, end,
                           np.add)
        key = (x.shape[2:], tuple(begin), tuple(end))
        if key not in self._divisor:  # the same for every run at one input size: keep the last one
            self._divisor = {key: self.divisor(x.shape[2:], begin, end)}
        np.divide(y, self._divisor[key], out=y)
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
