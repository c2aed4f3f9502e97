"""Dense 1x1 convolutions through the compiled ``pointwise_conv`` (``_pointconv.c``): a block of 8
output channels x up to 48 pixels in AVX-512 registers through all input channels, the bias, a
residual and the activation (Relu, Clip, Sigmoid, SiLU, HardSwish) applied before the one store, the
blocks shared over the native pool.

The layers of MobileNet and EfficientNet have few input channels (K = 16..960) and many pixels,
where BLAS's packing of both operands and the separate pass of the bias and activation cost as much
as the product (``python -m benchmarks.mobile_convs``: MobileNetV2's 19 1x1 layer shapes at batch 1,
one thread, 3.00 ms against 3.67 for ``np.matmul`` + the compiled activation and 4.24 for
onnxruntime's Conv + Clip; the 7x7 layers, whose weights outweigh their pixels, still lose to
onnxruntime by 1.1-1.3x). Taken only where the CPU has AVX-512 (``simd() == "avx512"``): the portable
path exists for other CPUs' correctness, not their speed, and there BLAS stays."""
from __future__ import annotations

import numpy as np

from dcm.runtime.cpu import memory, native

ROWS = 8  # output channels per register block: the packed weight's inner size
ACTS = ("relu", "clip", "sigmoid", "silu", "hardswish", "gelu", "gelu_tanh")  # the activations (Epilogue.act names) it applies itself
# Pixels per sample from which it beats BLAS: a plane of one pixel (squeeze-and-excitation convolutions)
# fills one lane of 16 and pays a whole vector's activation per channel, where BLAS runs a
# matrix-vector product (one thread, with SiLU: 1152->48 at 1 pixel 15 us against 6, 48->1152 26
# against 7; 320->1280 at 4 pixels 116 against 184).
MIN_PIXELS = 4


def takes(x: np.ndarray) -> bool:
    """Whether the kernel takes the float32 input x [N, C, H, W] of a layer it holds a packed weight for."""
    return x.dtype == np.float32 and x.shape[2] * x.shape[3] >= MIN_PIXELS


def available() -> bool:
    """The compiled kernel is built and runs its AVX-512 path on this CPU."""
    return native.pointwise_conv is not None and native.pointconv_simd() == "avx512"


def pack(weight: np.ndarray) -> np.ndarray:
    """weight [C_out, C_in] as the kernel reads it: [ceil(C_out / 8), C_in, 8], zero rows past C_out."""
    out_channels, in_channels = weight.shape
    blocks = -(-out_channels // ROWS)
    padded = np.zeros((blocks * ROWS, in_channels), dtype=np.float32)
    padded[:out_channels] = weight
    return memory.aligned(padded.reshape(blocks, ROWS, in_channels).transpose(0, 2, 1))


def pointwise_conv(x: np.ndarray, packed: np.ndarray, out_channels: int, bias: np.ndarray | None,
                   act: tuple[str, float, float] | None, residual: np.ndarray | None, scale: np.ndarray | None,
                   threads: int) -> np.ndarray:
    """act(W @ (x[n] * scale[n]) + bias + residual) for x float32 [N, C_in, H, W]: a new float32
    [N, C_out, H, W] array. act: an ``Epilogue.act`` of a kind in ACTS, or None; scale float32
    [N or 1, C_in] (or None), residual float32 [N, C_out, H, W]."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, c, h, w = x.shape
    y = np.empty((n, out_channels, h, w), dtype=np.float32)
    native.pointwise_conv(x, y, packed, (n, c, out_channels, h * w), bias, act, residual, scale, threads)
    return y
