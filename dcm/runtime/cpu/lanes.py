"""Dense convolutions of few input channels (the RGB stems: 3 channels, 27 to 147 multiply-adds per
output) through the compiled ``conv_lanes2d``: 8 output channels side by side in a register (16
with AVX-512), each input value of a window broadcast against their weights, bias and a Relu/Clip
clamp fused.

Through im2col these layers would be a GEMM with K = 27 (too short for BLAS to reach speed) plus the
column matrix, the crop and transpose of the product into NCHW, and the activation: four passes over
memory for little arithmetic (MobileNetV2's 3->32 stride-2 stem: 1.5 ms against onnxruntime's 0.46)."""
from __future__ import annotations

import numpy as np

from dcm.runtime.cpu import native
from dcm.runtime.cpu.windows import output_size

# Input channels x kernel taps per output up to which conv_lanes2d beats im2col + BLAS (one layer,
# batch 1, one thread; benchmarks/conv_choice.py --lanes, docs/kernel-choice.md).
MAX_TAPS = 150
# 3x3 layers of up to 32 input channels: lanes beats the direct kernel's dense time where Winograd cannot
# run (fewer than its 32 channels, stride 2). One layer, 1 / 2 threads: 24->24 at 128x128 1.78 / 0.92 ms
# against direct's 2.19 / 1.08; 32->64 stride 2 at 112x112 1.06 / 0.59 against im2col's 1.46 / 0.85.
# Where Winograd can run it wins, F(4x4, 3x3)'s transforms on vectors of tiles (batch 1, one thread,
# AVX-512 / AVX2 paths of one Zen 5: 32->32 at 128x128 1.53 / 1.64 ms against 1.74 / 4.20, at 56x56
# 0.26 / 0.41 against 0.35 / 1.11; onnxruntime 1.60 and 0.29).
MAX_TAPS_3X3 = 288
# Weight density from which it also beats the direct sparse kernel, whose time falls with the density
# where this one's does not (one layer, batch 1, one thread: 3->32 3x3 at 128x128 0.54 against 0.52
# ms at 50%, 0.55 against 0.64 at 70%; 16->16 at 112x112 1.02 against 1.12 at 70%; LeNet-5's conv1,
# 1->20 5x5 at 28x28, 0.041 against 0.037 at 70%). Strided layers (the stems) have their own limit
# (conv.py, Conv._lanes_beats_rival).
MIN_DENSITY = 0.75


# Grouped layers (RegNet's and ResNeXt's 3x3 layers) take it with at least this many output channels a
# group, on the AVX2 path: it holds 16 channels of a group in two registers, each broadcast input
# value feeding two multiply-adds. One layer, batch 1, one thread, AVX2 (Zen 3), against the direct
# kernel and onnxruntime: 160 channels in 10 groups at 14x14 0.14 ms against 0.26 and 0.15; 400 in 25
# at 7x7 0.13 against 0.22 and 0.12; 64 in 4, stride 2 at 56x56 (im2col there) 0.24 against 0.47 and
# 0.26. The AVX-512 path holds 16 channels in one register (one multiply-add a broadcast, the load-
# bound form), and there the channels-last pass takes these layers anyway (conv_nhwc_out).
GROUP_MIN_OUTPUTS = 8


def eligible(group: int, weight_shape: tuple[int, ...], pointwise: bool, winograd: bool = False) -> bool:
    """A 2-D (or lifted 1-D) dense convolution with few multiply-adds per output (of a group); 1x1
    layers are one GEMM. ``winograd``: Winograd could take the layer (3x3, stride 1, enough channels)."""
    if native.conv_lanes2d is None or pointwise or winograd:
        return False
    if group != 1 and (weight_shape[0] // group < GROUP_MIN_OUTPUTS or native.batched_simd() != "avx2"):
        return False
    return int(np.prod(weight_shape[1:])) <= (MAX_TAPS_3X3 if tuple(weight_shape[2:]) == (3, 3) else MAX_TAPS)


def conv_lanes(x: np.ndarray, weight: np.ndarray, strides: tuple[int, int], dilations: tuple[int, int],
               begin: list[int], end: list[int], bias: np.ndarray | None, clip: tuple[float, float] | None,
               threads: int, groups: int = 1) -> np.ndarray:
    """clip(conv(x, weight) + bias): weight float32 [C_out, C / groups, kh, kw] contiguous, bias
    float32 [C_out] or None. A new float32 [N, C_out, OH, OW] array."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, c, h, w = x.shape
    out_channels, _, kh, kw = weight.shape
    oh, ow = output_size((h, w), (kh, kw), strides, dilations, begin, end)
    y = np.empty((n, out_channels, oh, ow), dtype=np.float32)
    native.conv_lanes2d(x, y, weight, (n, c, h, w), (kh, kw), strides, dilations,
                        (begin[0], begin[1], end[0], end[1]), out_channels, bias, clip, threads, groups)
    return y
