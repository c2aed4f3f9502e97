"""``dcm.ScaledConv``: a 1x1 convolution of a product ``a * b`` (``dcm.runtime.channel_scale``).

Where one factor is a per-channel scale s [N or 1, C, 1, 1] of the other, x [N, C, H, W], and the
convolution is a dense 1x1 product, no scaled copy of x is made: the compiled 1x1 kernel
(pointconv.py) multiplies each input vector by its channel's factor as it loads it, or, on BLAS, the
scale goes into the weight, ``(W * s) @ x``: C_out * C_in multiplies instead of C_in * H * W. On BLAS
where the weight is the larger of the two (EfficientNet's last blocks: 1152 -> 320 channels at 7x7),
or for any other operands or convolution form, the product is computed as the Mul would, then
convolved.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from dcm.runtime.channel_scale import SCALED_CONV
from dcm.runtime.cpu import blas, pointconv
from dcm.runtime.cpu.conv import Conv
from dcm.runtime.cpu.elementwise import check_broadcast
from dcm.runtime.cpu.fused import register_internal


class _Scaled(NamedTuple):
    """x with its per-channel scale, handed through ``Conv.__call__`` to ``_conv``."""

    x: np.ndarray
    scale: np.ndarray


@register_internal(SCALED_CONV)
class ScaledConv(Conv):
    residual_arg = 4  # after a, W, B and b

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.quiet = False  # the scale's multiply is numpy's
        # The weight-scaling path: a dense 1x1 product on BLAS, unit strides, no padding (auto_pad
        # pads nothing around a 1x1 window at stride 1).
        self.into_weight = (not self.general and self.pointwise and self.direct is None and self.winograd is None
                            and self.lanes_weight is None and self.depthwise_weight is None and not self.tuning
                            and len(self.mms) == 1 and self.mms[0].mode == "dense" and self.strides == (1, 1)
                            and not any(self.pad_attrs.get("pads", ())))

    def __call__(self, a, w=None, b=None, c=None, residual=None):
        x, s = (a, c) if a.size >= c.size else (c, a)
        if self._weight_wins(x, s):
            return super().__call__(_Scaled(x, s), w, b, residual)
        if a.shape != c.shape:
            check_broadcast(a, c)
        return super().__call__(np.multiply(a, c).astype(np.result_type(a, c), copy=False), w, b, residual)

    def _weight_wins(self, x: np.ndarray, s: np.ndarray) -> bool:
        """s is a float32 per-channel scale of the float32 x [N, C, H, W], and the compiled kernel takes
        it, or W [C_out, C_in] is smaller than one plane set of x (C_out < H * W)."""
        if not self.into_weight or x.ndim != 4 or x.dtype != np.float32 or s.dtype != np.float32:
            return False
        n, c, h, w = x.shape
        return (s.shape in ((n, c, 1, 1), (1, c, 1, 1)) and c == self.in_channels
                and (self.packed is not None and pointconv.takes(x) or self.out_channels < h * w))

    def _conv(self, x, residual=None, epilogue=None):
        if not isinstance(x, _Scaled):
            return super()._conv(x, residual, epilogue)
        x, s = x
        n, c, h, w = x.shape
        if self.packed is not None and pointconv.takes(x):
            return self._packed_conv(x, residual, epilogue, np.ascontiguousarray(s.reshape(s.shape[0], c)))
        weights = np.multiply(self.mms[0].w, s.reshape(s.shape[0], 1, c))  # [N or 1, C_out, C_in]
        y = blas.matmul(weights, x.reshape(n, c, h * w), self.threads)
        return self._finish(y.reshape(n, -1, h, w), residual, epilogue)

    def describe(self) -> dict:
        scale = "in the kernel" if self.packed is not None else "into the weight"
        return {**super().describe(), "scale": scale if self.into_weight else "on the input"}
