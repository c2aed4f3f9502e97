"""Depthwise convolution (one input channel per group: MobileNet's and EfficientNet's 3x3 and 5x5
layers, ConvNeXt's 7x7) through the compiled ``depthwise2d``, the bias first and the activation last
while the output is in cache: a Relu/Clip clamp as each value is stored, a Sigmoid, SiLU or
HardSwish over each thread's range of planes right after it. Outputs under 32 wide and strided layers put 8 channels side by
side in AVX2 registers and compute up to 8 output pixels at once (independent multiply-add chains);
wide stride-1 layers shift the whole zero-padded plane, up to 4 taps of a kernel row per pass. The
kernel shares its output planes over the native pool itself (ranges of at least 65k multiply-adds,
whole groups of 8 planes), each thread with its own scratch kept between calls.

As a grouped GEMM it was one tiny product per channel (960 of them in MobileNetV2's last block)
after an im2col copy of the input; the direct sparse kernel takes horizontal stride 1 only."""
from __future__ import annotations

import numpy as np

from dcm.runtime.cpu import native
from dcm.runtime.cpu.windows import output_size



def is_depthwise(group: int, weight_shape: tuple[int, ...]) -> bool:
    """A 1-D or 2-D grouped convolution with one input channel per group (any channel multiplier)."""
    return group > 1 and len(weight_shape) in (3, 4) and weight_shape[1] == 1 and weight_shape[0] % group == 0


def depthwise(x: np.ndarray, weight: np.ndarray, strides: tuple[int, int], dilations: tuple[int, int],
              begin: list[int], end: list[int], bias: np.ndarray | None, act: tuple[str, float, float] | None,
              threads: int) -> np.ndarray:
    """y[n, o] = act(sum over taps of weight[o, i, j] * padded x[n, o // m] shifted + bias[o]); m is
    the channel multiplier (weight.shape[0] / channels, usually 1). weight: float32 [C*m, kh, kw]
    contiguous; act: an ``Epilogue.act`` of a kind in ``pointconv.ACTS``, or None. A new float32
    [N, C*m, OH, OW] array."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, c, h, w = x.shape
    out_channels, kh, kw = weight.shape
    oh, ow = output_size((h, w), (kh, kw), strides, dilations, begin, end)
    y = np.empty((n, out_channels, oh, ow), dtype=np.float32)
    args = (x, y, weight, (n, c, h, w), (kh, kw), strides, dilations, (begin[0], begin[1], end[0], end[1]),
            out_channels // c, bias, act)
    native.depthwise2d(*args, threads=threads)
    return y
