"""The compiled kernels of ``_native.c`` and its sibling modules, or None for each where dcm was
built without a C compiler (setup.py builds them as optional). Kernels read the attributes at load
time, so a test can set them to None to exercise the numpy/scipy fallbacks."""
from __future__ import annotations

try:
    from dcm.runtime.cpu._native import (SparseConv, SparseMatrix, batched_simd, conv_lanes2d, depthwise2d,
                                         im2col2d, pool2d, set_avx512, set_simd, winograd_conv)
except ImportError:  # pragma: no cover - a build without a compiler; tests/runtime/test_native.py says so
    SparseConv = SparseMatrix = conv_lanes2d = depthwise2d = im2col2d = pool2d = set_simd = winograd_conv = None
    batched_simd = set_avx512 = None
try:  # _pointwise.c: activations with a fused bias, LayerNorm and Softmax over the last axis, attention
    from dcm.runtime.cpu._pointwise import (activate, attention, layer_norm, set_avx512 as set_pointwise_avx512,
                                            set_simd as set_pointwise_simd, softmax)
except ImportError:  # pragma: no cover - as above
    activate = attention = layer_norm = set_pointwise_avx512 = set_pointwise_simd = softmax = None
try:  # _recurrent.c: the time-step loop of LSTM, GRU and RNN
    from dcm.runtime.cpu._recurrent import recurrent_scan, set_simd as set_recurrent_simd
except ImportError:  # pragma: no cover - as above
    recurrent_scan = set_recurrent_simd = None
try:  # _upsample.c: Resize's interpolation of the last two axes, ConvTranspose's col2im
    from dcm.runtime.cpu._upsample import col2im2d, resize2d, set_simd as set_upsample_simd
except ImportError:  # pragma: no cover - as above
    col2im2d = resize2d = set_upsample_simd = None
try:  # _layout.c: Transpose's swap of two blocks of axes, Concat's copies, a convolution's windows as rows
    from dcm.runtime.cpu._layout import concat, set_simd as set_layout_simd, transpose2d, window_rows
except ImportError:  # pragma: no cover - as above
    concat = set_layout_simd = transpose2d = window_rows = None

try:  # _pointconv.c: the dense 1x1 convolution
    from dcm.runtime.cpu._pointconv import pointwise_conv, set_simd as set_pointconv_simd, simd as pointconv_simd
except ImportError:  # pragma: no cover - as above
    pointwise_conv = set_pointconv_simd = pointconv_simd = None
try:  # _gemm.c: dense float32 products split over the native thread pool
    from dcm.runtime.cpu._gemm import (gemm, gemm_packed, pack_weight, packed_simd, set_avx512 as set_gemm_avx512,
                                       set_simd as set_gemm_simd)
except ImportError:  # pragma: no cover - as above
    gemm = gemm_packed = pack_weight = packed_simd = set_gemm_avx512 = set_gemm_simd = None
try:  # _nhwc.c: channels-last depthwise convolution and global average pool, the NCHW-in NHWC-out stem
    from dcm.runtime.cpu._nhwc import (conv_nhwc_out, depthwise_nhwc, global_average_nhwc,
                                       set_avx512 as set_nhwc_avx512, set_simd as set_nhwc_simd)
except ImportError:  # pragma: no cover - as above
    conv_nhwc_out = depthwise_nhwc = global_average_nhwc = set_nhwc_avx512 = set_nhwc_simd = None

# The load-time limit: a pruned layer denser than this is held dense. Below it the batched product
# (SparseMatrix.matmat_rows) beats BLAS on the dense form up to 12-35% density from 8 rows (by layer
# width, row count, instruction set and CPU), and matmul.prefers_dense decides per call's row count
# (docs/kernel-choice.md, benchmarks/matmul_choice.py).
SPARSE_MAX_DENSITY = 0.30

# What a compiled kernel raises on an argument it will not take: another dtype, a strided view, a wrong
# size (TypeError, ValueError, BufferError), its SIMD path turned off after load (RuntimeError). A
# kernel that calls one straight from a kept plan (nhwc.NhwcConv, norm.LayerNormalization) then runs
# its full path, which converts the argument or names the problem.
REFUSED = (TypeError, ValueError, BufferError, RuntimeError)

NAMES = ("SparseConv", "SparseMatrix", "depthwise2d", "conv_lanes2d", "im2col2d", "pool2d", "winograd_conv",
         "activate", "layer_norm", "softmax", "attention", "recurrent_scan", "resize2d", "col2im2d", "pointwise_conv", "gemm",
         "gemm_packed", "transpose2d", "concat", "depthwise_nhwc", "global_average_nhwc", "conv_nhwc_out",
         "window_rows")


def available() -> bool:
    return SparseMatrix is not None
