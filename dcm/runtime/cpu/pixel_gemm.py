"""A convolution of few output pixels as one dense GEMM on the packed kernel (``_gemm.c``'s
``gemm_packed``, AVX-512 or AVX2 tiles), the rows the output pixels: columns [N * OH * OW, kh * kw * C_in] @ W^T
[kh * kw * C_in, C_out], bias and Relu applied in the kernel's store, then one small transpose to NCHW.

Why: on a plane of 49 outputs (ResNet-18's 512-channel 7x7 layers) Winograd F(2x2) pads the plane
to 8x8 and streams a transformed weight 1.78x the dense one for only 16 tiles, and im2col + BLAS packs
both operands on every call; this product streams the weight, packed once, in 32-column panels that
stay in L2 while every row block passes over them (measured in conv.py, ``PIXEL_GEMM_MAX_OUTPUTS``).
The columns are gathered from a channels-last copy of the input, so that each window tap is one
contiguous run of C_in values: the compiled transpose, then the compiled ``window_rows``, both split
over the threads (numpy's padded copy and strided gather ran on one thread: 0.21 ms of ResNet-18's
64->128 stride-2 layer, about 0.5 ms of its run)."""
from __future__ import annotations

import numpy as np

from dcm.runtime.cpu import native
from dcm.runtime.cpu.matmul import packed_weight
from dcm.runtime.cpu.shape import check_elements


def available() -> bool:
    """The packed GEMM is built and runs on this CPU (AVX-512 or AVX2)."""
    return (native.gemm_packed is not None and native.transpose2d is not None and native.window_rows is not None
            and native.packed_simd() is not None)


class PixelGemm:
    """A constant weight [C_out, C_in, kh, kw] (group 1), packed once for ``gemm_packed``."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None):
        self.out_channels, self.in_channels, kh, kw = weight.shape
        self.kernel = (kh, kw)
        wt = np.ascontiguousarray(weight.transpose(2, 3, 1, 0), dtype=np.float32).reshape(-1, self.out_channels)
        self.packed = packed_weight(wt)
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)

    def conv(self, x: np.ndarray, strides: tuple[int, int], dilations: tuple[int, int], begin: list[int],
             end: list[int], relu: bool, threads: int) -> np.ndarray:
        """relu(conv(x) + bias) for x float32 [N, C_in, H, W]: a new float32 [N, C_out, OH, OW] array."""
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, strides, dilations
        hp, wp = h + begin[0] + end[0], w + begin[1] + end[1]
        oh, ow = (hp - (kh - 1) * dh - 1) // sh + 1, (wp - (kw - 1) * dw - 1) // sw + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"input {(h, w)} (padded) is smaller than the kernel window")
        check_elements([n, oh, ow, kh, kw, c], "Conv column matrix")
        nhwc = np.empty((n, h, w, c), dtype=np.float32)  # channels last: a tap's C_in values adjacent
        native.transpose2d(np.ascontiguousarray(x, dtype=np.float32), nhwc, (n, c, h * w), threads)
        cols = np.empty((n * oh * ow, kh * kw * c), dtype=np.float32)
        native.window_rows(nhwc, cols, (n, h, w, c), self.kernel, strides, dilations,
                           (begin[0], begin[1], end[0], end[1]), threads)
        out = np.empty((n * oh * ow, self.out_channels), dtype=np.float32)
        native.gemm_packed(cols, self.packed, out, threads, bias=self.bias, relu=relu)
        y = np.empty((n, self.out_channels, oh, ow), dtype=np.float32)
        native.transpose2d(out, y, (n, oh * ow, self.out_channels), threads)  # 4x numpy's time on 784 x 128
        return y
