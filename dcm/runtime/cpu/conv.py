"""Conv: im2col through a strided window view, then the weight [C_out/g, C_in/g*kh*kw] @ columns;
wide dense 3x3 stride-1 convolutions use Winograd F(2x2, 3x3) instead (winograd.py), pruned or
small ones the compiled direct sparse convolution (``_native.c``: no column matrix at all),
depthwise ones ``depthwise2d`` (depthwise.py) and dense ones with few input channels, the stems,
``conv_lanes2d`` (lanes.py).
3-D convolutions, and weights fed at run time, take the general path: one copy of the window view
of any number of spatial axes as columns, then the same products."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from dcm.errors import UnsupportedOpError
from dcm.runtime.cpu import blas, lanes, native, pixel_gemm, pointconv, tune
from dcm.runtime.cpu.activation import relu
from dcm.runtime.cpu.depthwise import depthwise, is_depthwise
from dcm.runtime.cpu.matmul import WeightMatmul
from dcm.runtime.cpu.registry import register
from dcm.runtime.cpu.winograd import WinogradWeight, eligible
from dcm.runtime.cpu.shape import check_elements
from dcm.runtime.cpu.windows import (axis_ints, im2col, ints2, output_size, pads2, reduce_windows, resolve_pads,
                                      spatial_2d, windows)
from dcm.runtime.fusion import add_and_activate
from dcm.runtime.kernel import LARGE_BATCH, Kernel

# Direct sparse convolution against Winograd and im2col + BLAS, one layer at batch 1, one thread
# (benchmarks/conv_choice.py, docs/kernel-choice.md): on 3x3 layers of 64-256 channels it wins up
# to 10-20% density (0.92 against 1.88 ms at 10%, 64 channels at 56x56). Layers with few weights
# (LeNet-5's, 3x3 at 32 channels) lose most of their dense time to im2col and win at any density
# (conv1 at 66%: 37 -> 12 us). A 1x1 layer's dense form is one GEMM on NCHW with no copy, which
# direct beats only at about 5% (64 channels at 56x56: 0.20 against 0.23 ms at 5%, 0.25 against
# 0.23 at 10%, 1.05 against 0.23 dense), however few its weights.
DIRECT_MAX_DENSITY = 0.15
DIRECT_MAX_DENSITY_POINTWISE = 0.07
# Where the CPU has AVX-512 the direct kernel takes 16 pixels to a register, 16 registers of sums per
# weight, input channels in L1-sized blocks: on ResNet-18's 3x3 stride-1 layers at 30% density it beats
# Winograd at every width and onnxruntime's dense time on three of four (1 thread, batch 1, interleaved:
# 64ch 56x56 1.29 against Winograd 1.70 and onnxruntime 1.51 ms; 128ch 28x28 1.36 / 1.57 / 1.50;
# 256ch 14x14 1.41 / 1.64 / 1.64; 512ch 7x7 3.04 / 3.83 / 2.18), and loses to Winograd from about 40%
# (128ch: 1.71 against 1.60 ms at 40%).
DIRECT_MAX_DENSITY_AVX512 = 0.35
# ... except strided layers on planes of few outputs, where each stored weight has too few pixels to work
# on: there im2col and the batched sparse product (SparseMatrix.matmat, all 49 columns of a 7x7 plane in
# one AVX-512 panel) take the layer (ResNet-18's 256->512 3x3/2 at 14x14, 30%, one thread: 0.65 against
# 0.89 ms direct at batch 1, onnxruntime 0.58; 4.6 against 6.9 at batch 8, onnxruntime 5.3). Stride-1
# layers there run the direct kernel's flat layout, segments across the plane's rows (512ch 7x7 at 30%:
# 1.18 against 1.60 ms im2col's at batch 1, onnxruntime 1.21; 8.2 against 13.1 at batch 8, onnxruntime
# 10.0; on two threads 0.60 / 0.76 / 0.57 and 5.1 / 7.1 / 5.2).
SMALL_PLANE_OUTPUTS = 64
# Dense layers (group 1; 1x1 ones on small planes, below) whose call has few output pixels, all samples
# together, take the packed AVX-512 GEMM with the pixels as rows (pixel_gemm.py) in place of Winograd (up
# to 64 pixels) or im2col + BLAS (up to 2048). Batch 1, one thread, dense ResNet-18 in the model: each 512-channel 7x7
# layer 3.2 -> 2.65 ms (onnxruntime 1.87), the stride-2 64->128 at 56x56 (784 pixels) 1.45 -> 1.28
# (0.69), 128->256 at 28x28 (196) 1.30 -> 1.04 (0.78). One layer alone, interleaved: the 7x7 layer 2.07
# against Winograd's 2.29, 64->64 5x5 at 28x28 1.44 against im2col's 1.74, 64->192 5x5 at 27x27 3.51
# against 3.71; even or worse beyond: 32->64 stride 2 at 112x112 (3136 pixels) 1.67 against 1.61,
# AlexNet's conv1 (3025) 2.63 either way, 196 pixels of a Winograd layer (256ch 14x14) 1.82 against
# 1.51, the 7x7 layer at batch 8 (392) 13.7 against 11.8. Pruned layers keep the sparse kernels: at 30%
# the batched sparse product beats this dense one on the 7x7 planes too (2.36 against 2.77 ms).
PIXEL_GEMM_MAX_OUTPUTS_WINOGRAD = 64
PIXEL_GEMM_MAX_OUTPUTS = 2048
# 1x1 layers take it where each sample's plane has at most this many pixels: on ResNet-50's 7x7 stage
# (one layer alone, one thread, against the NCHW pointwise kernel) 2048->512 0.94 -> 0.75 ms, 512->2048
# 0.93 -> 0.78, the strided 1024->2048 shortcut 1.87 -> 1.53 (onnxruntime 0.67-0.69 and 1.52); at batch
# 8: 7.5 -> 5.4, 7.5 -> 4.9, 15.6 -> 11.1 (onnxruntime 5.0, 5.5, 13.2); but 14x14 planes lost (1024->256:
# 0.73 -> 0.79, 512->128 at 28x28: 0.67 -> 0.93).
PIXEL_GEMM_MAX_PLANE_POINTWISE = 64
# ... and only layers of at least this many multiply-adds per output (kh * kw * C_in): on shallower ones
# the column gather (measured when it was numpy's, on one thread) outweighs the product's gain (ConvNeXt's 2x2 stride-2
# downsample layers: 40->80 at 56x56 0.35 against im2col's 0.29 ms, 80->160 at 28x28 0.27 / 0.25, but
# 160->320 at 14x14 0.26 / 0.28; 32->64 3x3 stride 2 at 112x112, 288 deep, 1.67 / 1.61).
PIXEL_GEMM_MIN_DEPTH = 512
# ... and of at least this many input channels: the gather copies runs of C_in values (ViT-Tiny's 16x16
# stride-16 patch layer, 3 channels, 768 deep, in the model: 0.93 against im2col's 0.75 ms).
PIXEL_GEMM_MIN_CHANNELS = 32
# Layers the direct kernel cannot take (horizontal stride 2 without AVX-512: ResNet's strided 3x3s)
# go through im2col, whose many columns suit BLAS: the stem at 30% density took 10.3 ms dense
# against 16.2 ms with the sparse product; 128 channels 3x3 stride 2 at 10%, 2.08 ms either way.
IM2COL_SPARSE_MAX_DENSITY = 0.15
# SparseConv's AVX-512 path takes a horizontal stride s as s phases of the input's columns (each a
# copy in which a stride-s row's outputs read adjacent values), up to this stride.
DIRECT_MAX_STRIDE_AVX512 = 4
# A dense 3x3 stride-1 layer of 32-63 channels has few weights, yet Winograd beats direct on it
# (U-Net's 32->32 at 128x128: 4.4 against 8.5 ms; 32->32 at 28x28: 0.32 against 0.57): from about
# 40% density, as direct's time falls with the density.
DIRECT_MAX_DENSITY_WINOGRAD = 0.4
# With tune=True, layers up to this density that the direct kernel can take time it against the dense
# form at their first run; denser ones are left to the dense kernels.
TUNE_MAX_DENSITY = 0.6
# conv_lanes2d holds 8 output channels to a register and multiplies each broadcast input by one of them
# where a layer has no more (AVX2 registers); at unit horizontal stride the direct kernel, 16 pixels to
# an AVX-512 register, then wins at any density (one layer, one thread, lanes against direct, us: LeNet-5's
# 1->6 5x5 at 32x32, batch 8, 118 / 56; 3->8 3x3 at 64x64 73 / 42; 8->8 at 56x56 120 / 75; 32->8 at 56x56
# 415 / 245, on 2 threads 327 / 193; 32->8 at 16x16, batch 3, 182 / 116; 8->4 at 32x32 49 / 28).
LANES_MIN_OUTPUTS_AVX512 = 9
# "Few weights" counts a group's: a grouped layer's im2col path runs one small product per group
# (RegNetX-400MF's 400-channel 3x3 layer of 25 groups at 7x7, 57.6k weights: 0.75 ms against 0.32 for
# direct, one thread, a Zen 3 without AVX-512, where no channels-last region takes it).
DIRECT_SMALL_WEIGHTS = 32_768


def _avx512() -> bool:
    """Whether the compiled kernels run their AVX-512 paths (the direct kernel's strided and wide forms)."""
    return native.batched_simd is not None and native.batched_simd() == "avx512"


@register("Conv")
class Conv(Kernel):
    weight_inputs = (1,)
    allow_winograd = True
    allow_direct = True
    fuses_relu = True
    fuses_residual = True
    residual_arg = 3  # after x, W and B
    uses_scratch = True  # the session drops a large per-thread work buffer after each run

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        name = node.inputs[1]
        self.group = int(self.attrs.get("group", 1))
        self.direct = self.winograd = self.depthwise_weight = self.lanes_weight = self.packed = None
        self.dense_weight = self.plane_gemm = None  # pixel_gemm's weight, packed at its first use
        self.tuning, self.tuned = False, None  # tune=True: both forms held until the first run picks one
        self.index_cache: dict = {}  # im2col's gather index per small input shape
        if not ctx.is_const(name):  # dense, on the general path, the weight read on every run
            self.weight_inputs, self.mode, self.density, self.general, self.mms = (), "dense", None, True, []
            return
        shape = ctx.model.tensors[name].shape
        if len(shape) < 3:
            raise UnsupportedOpError(f"Conv {node.name!r}: the weight has rank {len(shape)}, at least 3 expected")
        self.nd = len(shape) - 2
        self.general = self.nd > 2
        if self.general:
            self._load_general(ctx, node, name, shape)
            return
        self.out_channels = shape[0]
        self.kernel = (1, shape[2]) if self.nd == 1 else (shape[2], shape[3])
        if self.out_channels % self.group:
            raise UnsupportedOpError(f"Conv {node.name!r}: {self.out_channels} outputs not divisible by group {self.group}")
        self.strides = ints2(self.attrs, "strides", self.nd, 1)
        self.dilations = ints2(self.attrs, "dilations", self.nd, 1)
        self.pad_attrs = pads2(self.attrs, self.nd)
        # Each sample adds one column per output pixel; unknown at load, but rarely under 16.
        self.mode, w, self.density = ctx.weight(node, name, columns_per_sample=LARGE_BATCH)
        self.in_channels = shape[1] * self.group
        self.mms: list[WeightMatmul] = []
        b = ctx.opt_const(node, 2)
        if b is not None and b.size != self.out_channels:
            raise UnsupportedOpError(f"Conv {node.name!r}: bias of {b.size} values for {self.out_channels} outputs")
        self.bias = None if b is None else b.astype(np.float32).reshape(1, -1, 1, 1)
        requested = ctx.requested_mode(node, name)
        self.pointwise = self.kernel == (1, 1) and self.group == 1
        # allow_direct: the compiled CPU kernels, direct sparse, depthwise and lanes (not on the GPU backend).
        wide_3x3 = self.allow_winograd and eligible(self.kernel, self.strides, self.dilations, self.group, shape[1],
                                                     shape[0])
        depthwise_layer = native.depthwise2d is not None and is_depthwise(self.group, shape)
        lanes_layer = lanes.eligible(self.group, shape, self.pointwise, wide_3x3)
        few_inputs = lanes_layer and (requested == "dense" or self._lanes_beats_rival())
        # tune: a pruned layer lanes can take races it against the direct kernel, its rival on such layers
        rival = (self._direct_weight("sparse", w, shape) if ctx.tune and requested is None and lanes_layer
                 and not depthwise_layer and self.allow_direct and self.density <= TUNE_MAX_DENSITY else None)
        if self.allow_direct and requested != "sparse" and (depthwise_layer or few_inputs or rival is not None):
            dense = w.to_scipy().toarray() if self.mode == "sparse" else w
            weight = np.ascontiguousarray(dense.reshape(shape[0], shape[1], *self.kernel), dtype=np.float32)
            if depthwise_layer:
                self.depthwise_weight = weight[:, 0]  # [C * multiplier, kh, kw], still contiguous
            else:
                self.lanes_weight = weight
            if rival is not None:  # both held until the first run (_race_lanes)
                self.direct, self.tuning = rival, True
            self.mode, self.bias_vector = "dense", None if b is None else np.ascontiguousarray(self.bias.reshape(-1))
            return
        self.direct = self._direct_weight(requested, w, shape)
        if (self.direct is None and requested is None and self.mode == "sparse"
                and (wide_3x3 or self.pointwise or self.density > IM2COL_SPARSE_MAX_DENSITY)):
            self.mode, w = "dense", w.to_scipy().toarray()  # too dense for the sparse kernels: Winograd or BLAS wins
        if self.direct is not None:
            self.mode = "sparse"
            self.quiet = True  # compiled; Inf/NaN counted in C, and _poison_direct adds 0/1 counts only
            self.bias_vector = None if b is None else np.ascontiguousarray(self.bias.reshape(-1))
        elif wide_3x3 and self.mode == "dense":
            self.winograd = WinogradWeight(w.reshape(shape))
        else:
            m = w.to_scipy() if self.mode == "sparse" else w
            per = self.out_channels // self.group
            self.mms = [WeightMatmul(self.mode, m[g * per : (g + 1) * per], ctx.threads) for g in range(self.group)]
            if self.pointwise and self.mode == "dense" and pointconv.available():
                self.packed = pointconv.pack(np.asarray(w, dtype=np.float32).reshape(self.out_channels, -1))
        if ctx.tune and requested is None and self.density <= TUNE_MAX_DENSITY:
            self.tuning = self._both_forms(w, shape, wide_3x3, b)
        if (self.allow_direct and self.direct is None and self.mode == "dense" and not self.tuning
                and self.group == 1 and int(np.prod(shape[1:])) >= PIXEL_GEMM_MIN_DEPTH
                and shape[1] >= PIXEL_GEMM_MIN_CHANNELS and pixel_gemm.available()):
            self.dense_weight = np.asarray(w).reshape(shape[0], shape[1], *self.kernel)  # a 1-D layer's as 1 x k

    def _both_forms(self, w, shape, wide_3x3: bool, b) -> bool:
        """For ``tune``: give a layer that the direct sparse kernel can take both it and the dense form
        (Winograd, or BLAS on im2col columns or the 1x1 layer's pixels) it does not have yet."""
        if self.direct is None:
            self.direct = self._direct_weight("sparse", w, shape)
            if self.direct is None:
                return False
            self.bias_vector = None if b is None else np.ascontiguousarray(self.bias.reshape(-1))
            return True
        # w as loaded: held dense where over native.SPARSE_MAX_DENSITY, even when direct took the layer
        dense = np.asarray(w if isinstance(w, np.ndarray) else w.to_scipy().toarray(), dtype=np.float32)
        if wide_3x3:
            self.winograd = WinogradWeight(dense.reshape(shape))
        else:
            per = self.out_channels // self.group
            self.mms = [WeightMatmul("dense", dense[g * per : (g + 1) * per], self.threads) for g in range(self.group)]
        self.quiet = False  # the dense form's numpy products may warn on Inf/NaN inputs
        return True

    def _direct_wins(self, x: np.ndarray, begin: list[int], end: list[int]) -> bool:
        """``tune``: time the direct kernel against the dense form on this input (or reuse the process's
        decision for this layer shape, density and input), then drop the form that lost."""
        direct = self.direct
        key = ("conv", self.in_channels, self.out_channels, self.kernel, self.group, self.direct_weights, self.strides,
               self.dilations, tuple(begin), tuple(end), x.shape, self.threads)

        def dense() -> np.ndarray:
            self.direct = None
            try:
                return self._conv(x)[0]
            finally:
                self.direct = direct

        self.tuning = False  # the direct candidate runs _conv's own dispatch (a small plane's im2col too)
        self.tuned = tune.choose(key, {"direct": lambda: self._conv(x)[0], "dense": dense})
        if self.tuned == "direct":
            self.winograd, self.mms, self.mode, self.quiet = None, [], "sparse", True
        else:
            self.direct, self.mode = None, "dense"
        return self.tuned == "direct"

    def _race_lanes(self, x: np.ndarray) -> None:
        """``tune`` on a pruned layer of few input channels: time conv_lanes2d against the direct kernel
        on this input (or reuse the process's decision), then drop the loser. Their break-even density
        moves with the window and the output channels ("Pruned stems", docs/kernel-choice.md)."""
        key = ("conv-lanes", self.in_channels, self.out_channels, self.kernel, self.group, self.direct_weights,
               self.strides, self.dilations, repr(self.pad_attrs), x.shape, self.threads)
        self.tuning = False  # the direct candidate runs _conv's own dispatch, untimed
        self.tuned = tune.choose(key, {"lanes": lambda: self._lanes(x, None), "direct": lambda: self._conv(x)[0]})
        if self.tuned == "direct":
            self.lanes_weight, self.mode, self.quiet = None, "sparse", True
        else:
            self.direct = None

    def _lanes_beats_rival(self) -> bool:
        """Whether conv_lanes2d takes a layer it can run, by the weight's density. At stride 1 it races the
        direct kernel, which skips pruned weights (from lanes.MIN_DENSITY), and which takes layers of at
        most 8 output channels at any density where the CPU has AVX-512 (LANES_MIN_OUTPUTS_AVX512). A
        strided layer (the stems) the direct kernel runs only on AVX-512 and only up to DIRECT_MAX_DENSITY_AVX512, its limit for
        strided layers, below which it wins or ties: one layer, batch 1, one thread, Xeon (AVX-512), lanes
        against direct, ms: 3->64 7x7/2 at 224x224 1.97 / 1.54 at 30%, 1.87 / 2.04 at 50%; 3->32 3x3/2 at
        224x224 0.51 / 0.51 at 30%, 0.50 / 0.55 at 50%; 3->16 3x3/2 at 128x128 0.088 / 0.066 at 30%
        (`python -m benchmarks.conv_choice --stems`). Elsewhere lanes races im2col,
        which only a very sparse weight makes faster."""
        if self.strides[1] == 1:
            if self.out_channels // self.group < LANES_MIN_OUTPUTS_AVX512 and _avx512():
                return False
            return self.density >= lanes.MIN_DENSITY
        if self.allow_direct and self._direct_runs_stride():
            return self.density > DIRECT_MAX_DENSITY_AVX512
        return self.density > IM2COL_SPARSE_MAX_DENSITY

    def _direct_runs_stride(self) -> bool:
        """Whether the direct kernel takes this horizontal stride: 1, or up to DIRECT_MAX_STRIDE_AVX512 where
        the CPU has AVX-512."""
        return self.strides[1] <= (DIRECT_MAX_STRIDE_AVX512 if _avx512() else 1)

    def _direct_weight(self, requested: str | None, w, shape):
        """The weight for the direct sparse convolution, where it is the faster kernel (see
        DIRECT_MAX_DENSITY): horizontal stride 1 (up to DIRECT_MAX_STRIDE_AVX512 on AVX-512), and sparse
        asked for, or a pruned layer, or a small layer that is not 1x1."""
        if native.SparseConv is None or not self.allow_direct or requested == "dense" or not self._direct_runs_stride():
            return None
        if requested is None and self.pointwise and self.density > DIRECT_MAX_DENSITY_POINTWISE:
            return None
        wide = not self.pointwise and _avx512()
        limit = DIRECT_MAX_DENSITY_AVX512 if wide else DIRECT_MAX_DENSITY
        if (requested is None and self.density > limit
                and (int(np.prod(shape)) // self.group > DIRECT_SMALL_WEIGHTS or self.strides[1] > 1)):
            return None  # (few weights a group win at any density, measured at stride 1 only)
        if (requested is None and self.density > DIRECT_MAX_DENSITY_WINOGRAD and self.allow_winograd
                and eligible(self.kernel, self.strides, self.dilations, self.group, shape[1], shape[0])):
            return None  # few weights, but Winograd's layer (32+ channels): it wins on the denser ones
        m = w.to_scipy() if self.mode == "sparse" else sp.csr_array(w)
        m.sort_indices()
        self.direct_csr, self.plane_mms = m, None  # the small-plane product, made at its first use
        self.direct_pattern = (m.indptr.astype(np.int64), m.indices.astype(np.int32))
        self.direct_weights = m.nnz  # multiply-adds per output pixel, over all channels
        return native.SparseConv(self.out_channels, shape[1], *self.kernel, self.group, *self.direct_pattern,
                          m.data.astype(np.float32, copy=False))

    def _load_general(self, ctx, node, name: str, shape: tuple[int, ...]) -> None:
        """A constant weight for the general path: its products, sparse or dense as chosen."""
        self.mode, w, self.density = ctx.weight(node, name, columns_per_sample=LARGE_BATCH)
        self.weight_shape = tuple(shape)
        self.mms = self._group_products(self.mode, w if self.mode == "sparse" else w.reshape(shape[0], -1))

    def _group_products(self, mode: str, w) -> list[WeightMatmul]:
        """One W_g [C_out/g, C_in/g * k] product per group."""
        m = w.to_scipy() if mode == "sparse" else w
        out = self.weight_shape[0]
        if out % self.group:
            raise UnsupportedOpError(f"Conv {self.node.name!r}: {out} outputs not divisible by group {self.group}")
        per = out // self.group
        return [WeightMatmul(mode, m[g * per : (g + 1) * per], self.threads) for g in range(self.group)]

    def _general(self, x: np.ndarray, w, b) -> np.ndarray:
        """Any number of spatial axes: columns [G, C_in/g * k, N * pixels] copied from the window view,
        in float32 (a float16 or float64 input gets its own type back)."""
        mms = self.mms
        if w is not None:
            w = np.asarray(w, dtype=np.float32)
            if w.ndim < 3:
                raise ValueError(f"the weight has rank {w.ndim}, at least 3 expected")
            self.weight_shape = w.shape
            mms = self._group_products("dense", w.reshape(w.shape[0], -1))
        shape = self.weight_shape
        nd = len(shape) - 2
        if x.ndim != nd + 2:
            raise ValueError(f"input of rank {x.ndim} for a weight of rank {nd + 2}")
        n, c = x.shape[:2]
        if c != shape[1] * self.group:
            raise ValueError(f"input has {c} channels, the weight expects {shape[1] * self.group}")
        kernel = tuple(shape[2:])
        given = self.attrs.get("kernel_shape")
        if given is not None and list(given) != list(kernel):
            raise ValueError(f"kernel_shape {given} does not match the weight {list(shape)}")
        strides = tuple(axis_ints(self.attrs, "strides", nd, 1))
        dilations = tuple(axis_ints(self.attrs, "dilations", nd, 1))
        begin, end = resolve_pads(self.attrs, x.shape[2:], kernel, strides, dilations)
        out = output_size(x.shape[2:], kernel, strides, dilations, begin, end)
        check_elements([n, c, *kernel, *out], "Conv column matrix")
        v = windows(x.astype(np.float32, copy=False), kernel, strides, dilations, begin, end)  # [N, C, *out, *k]
        cg = c // self.group
        cols = v.reshape(n, self.group, cg, *out, *kernel)
        cols = np.ascontiguousarray(cols.transpose(1, 2, *range(3 + nd, 3 + 2 * nd), 0, *range(3, 3 + nd)))
        cols = cols.reshape(self.group, cg * int(np.prod(kernel)), -1)
        parts = [mm.left(cols[g]) for g, mm in enumerate(mms)]
        y = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]  # [C_out, N * pixels]
        y = np.ascontiguousarray(y.reshape(shape[0], n, *out).swapaxes(0, 1))
        if b is not None:
            b = np.asarray(b, dtype=np.float32)
            if b.shape != (shape[0],):
                raise ValueError(f"bias of shape {list(b.shape)}, expected [{shape[0]}]")
            y += b.reshape((1, -1) + (1,) * nd)
        if self.relu:
            relu(y, out=y)
        return y.astype(x.dtype, copy=False) if x.dtype in (np.float16, np.float64) else y  # float32 work

    def __call__(self, x, w=None, b=None, residual=None):
        if self.tuning and self.lanes_weight is not None:
            self._race_lanes(x)
        e = self.epilogue
        if self.depthwise_weight is not None or self.lanes_weight is not None:  # they apply the activation
            act = self._own_act(residual, e)
            y = self._lanes(x, act)
            e = None if act is not None else e
        else:
            y, done = (self._general(x, w, b), False) if self.general else self._conv(x, residual, e)
            if done:  # bias, residual and activation already in the product's one compiled pass
                return (y,)
        if residual is not None:  # a fused Add: the residual connection, before the activation
            if add_and_activate(y, None, False, e, residual=residual, threads=self.threads):  # one compiled pass
                return (y,)
            if residual.shape == y.shape and residual.dtype == y.dtype:
                np.add(y, residual, out=y)
            else:
                y = self.residual_add(y, residual)[0]
        return (y if e is None else e(y),)

    def _own_act(self, residual: np.ndarray | None, epilogue) -> tuple[str, float, float] | None:
        """The activation (an ``Epilogue.act``) the depthwise or lanes kernel applies itself: depthwise2d
        any of pointconv.ACTS, conv_lanes2d a Relu or Clip; None where the caller applies it (after a
        residual, which these kernels do not add)."""
        if residual is not None:
            return None
        if self.relu:
            return ("relu", 0.0, 0.0)
        act = None if epilogue is None else epilogue.act
        # depthwise2d's Sigmoid, SiLU and HardSwish are vectorized on AVX-512 only (elsewhere _pointwise.c's
        # AVX2 pass after the kernel is the faster one)
        wide = self.depthwise_weight is not None and native.batched_simd() == "avx512"
        kinds = pointconv.ACTS if wide else ("relu", "clip")
        return act if act is not None and act[0] in kinds else None

    def _lanes(self, x: np.ndarray, act: tuple[str, float, float] | None) -> np.ndarray:
        """The compiled kernels with 8 channels to a register: depthwise, or few input channels."""
        x, was_1d = spatial_2d(x)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"Conv {self.node.name!r}: input has {x.shape[1]} channels, weight expects "
                             f"{self.in_channels}")
        begin, end = resolve_pads(self.pad_attrs, x.shape[2:], self.kernel, self.strides, self.dilations)
        if self.depthwise_weight is not None:
            y = depthwise(x, self.depthwise_weight, self.strides, self.dilations, begin, end, self.bias_vector, act,
                          self.threads)
        else:
            clip = None if act is None else (0.0, np.inf) if act[0] == "relu" else (act[1], act[2])
            y = lanes.conv_lanes(x, self.lanes_weight, self.strides, self.dilations, begin, end, self.bias_vector,
                                 clip, self.threads, self.group)
        return y[:, :, 0, :] if was_1d else y

    def _conv(self, x: np.ndarray, residual: np.ndarray | None = None,
              epilogue=None) -> tuple[np.ndarray, bool]:
        """(y, done): done when the residual and the epilogue are applied too (see ``_finish``)."""
        x, was_1d = spatial_2d(x)
        n, c = x.shape[:2]
        kh, kw = self.kernel
        if c != self.in_channels:
            raise ValueError(f"Conv {self.node.name!r}: input has {c} channels, weight expects {self.in_channels}")
        begin, end = resolve_pads(self.pad_attrs, x.shape[2:], self.kernel, self.strides, self.dilations)
        mms = self.mms
        if self.direct is not None and (not self.tuning or self._direct_wins(x, begin, end)):
            if not self._small_plane(x.shape, begin, end):
                out = self._run_direct(x, begin, end)
                return (out[:, :, 0, :] if was_1d else out), False
            mms = self._plane_products()
        elif self.dense_weight is not None and self._few_outputs(x.shape, begin, end):
            out = self._pixel_gemm().conv(x, self.strides, self.dilations, begin, end, self.relu, self.threads)
            return (out[:, :, 0, :] if was_1d else out), False
        elif self.winograd is not None:
            return self.winograd.conv(x, begin, end, self.bias, self.relu, self.threads), False
        pointwise = self.kernel == (1, 1) and self.group == 1 and not any(begin) and not any(end)
        if pointwise and (n == 1 or self.mode == "dense"):
            out, done = self._pointwise(x, None if was_1d else residual, epilogue)
            return (out[:, :, 0, :] if was_1d else out), done
        cg = c // self.group
        cols, oh, ow, row = im2col(x, self.group, self.kernel, self.strides, self.dilations, begin, end,
                                   self.index_cache, self.threads)
        outs = [mm.left(cols[g].reshape(cg * kh * kw, -1)).reshape(-1, n, oh, row) for g, mm in enumerate(mms)]
        y = np.concatenate(outs, axis=0) if len(outs) > 1 else outs[0]  # [C_out, N, OH, row], a new array
        done = False
        if n == 1 and row == ow:  # already [1, C_out, OH, OW]: no copy (batch 1 at LeNet size)
            out, done = self._finish(y.reshape(1, -1, oh, ow), None if was_1d else residual, epilogue)
        else:
            src = y[..., :ow].transpose(1, 0, 2, 3)  # [N, C_out, OH, OW] view: crop, transpose ...
            out = np.empty(src.shape, dtype=np.float32)
            if self.bias is not None:
                np.add(src, self.bias, out=out)  # ... and add the bias in the same pass
            else:
                np.copyto(out, src)
            if self.relu:
                relu(out, out=out)
        return (out[:, :, 0, :] if was_1d else out), done

    def _small_plane(self, shape: tuple[int, ...], begin: list[int], end: list[int]) -> bool:
        """Whether this call of a direct layer goes to im2col and the batched sparse product instead
        (SMALL_PLANE_OUTPUTS): few outputs, strided, one group, not 1x1, on SparseConv's AVX-512 path."""
        if (not shape[0] or self.group != 1 or self.pointwise or all(s == 1 for s in self.strides)
                or native.batched_simd is None):  # 0 samples: direct
            return False
        oh, ow = output_size(shape[2:], self.kernel, self.strides, self.dilations, begin, end)
        return oh * ow <= SMALL_PLANE_OUTPUTS and native.batched_simd() == "avx512"

    def _few_outputs(self, shape: tuple[int, ...], begin: list[int], end: list[int]) -> bool:
        """Whether this call of a dense layer goes to pixel_gemm: few output pixels in all its samples
        (PIXEL_GEMM_MAX_OUTPUTS, fewer for a Winograd layer), and for a 1x1 layer small planes."""
        oh, ow = output_size(shape[2:], self.kernel, self.strides, self.dilations, begin, end)
        limit = PIXEL_GEMM_MAX_OUTPUTS if self.winograd is None else PIXEL_GEMM_MAX_OUTPUTS_WINOGRAD
        if self.pointwise and oh * ow > PIXEL_GEMM_MAX_PLANE_POINTWISE:
            return False
        return 0 < shape[0] * oh * ow <= limit

    def _pixel_gemm(self) -> pixel_gemm.PixelGemm:
        """The dense weight packed for pixel_gemm, at its first use."""
        if self.plane_gemm is None:
            self.plane_gemm = pixel_gemm.PixelGemm(self.dense_weight, self.bias)
        return self.plane_gemm

    def _plane_products(self) -> list[WeightMatmul]:
        """The direct layer's weight as a batched sparse product, made at the first small-plane call."""
        if self.plane_mms is None:
            self.plane_mms = [WeightMatmul("sparse", self.direct_csr, self.threads)]
        return self.plane_mms

    def _run_direct(self, x: np.ndarray, begin: list[int], end: list[int]) -> np.ndarray:
        """Direct sparse convolution on the native pool's threads: whole samples a thread for as many
        samples as divide among them, each further sample split in the kernel (by input channels for
        its work planes, then by output channels or tiles)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        oh, ow = output_size(x.shape[2:], self.kernel, self.strides, self.dilations, begin, end)
        y = np.empty((x.shape[0], self.out_channels, oh, ow), dtype=np.float32)
        if self.direct.run(x, y, x.shape, self.strides, self.dilations, (begin[0], begin[1], end[0], end[1]),
                           self.bias_vector, self.relu, threads=self.threads):
            self._poison_direct(x, y, begin, end)
        return y

    def _poison_direct(self, x: np.ndarray, y: np.ndarray, begin: list[int], end: list[int]) -> None:
        """Give y the NaNs of a dense convolution: an output whose window holds an Inf/NaN input at a
        pruned weight is 0 * Inf = NaN (the sparse kernel never reads it). Counts, per output, the
        bad inputs in its window (over its group's channels) and those at stored weights."""
        bad = (~np.isfinite(x)).astype(np.float32)
        ones = native.SparseConv(self.out_channels, self.in_channels // self.group, *self.kernel, self.group,
                          *self.direct_pattern, np.ones(len(self.direct_pattern[1]), np.float32))
        hits = np.empty_like(y)
        ones.run(bad, hits, bad.shape, self.strides, self.dilations, (begin[0], begin[1], end[0], end[1]))
        n, c, h, w = bad.shape
        per_group = bad.reshape(n, self.group, c // self.group, h, w).sum(axis=2)  # [N, G, H, W]
        total = reduce_windows(per_group, self.kernel, self.strides, self.dilations, begin, end, np.add)
        y[hits < np.repeat(total, self.out_channels // self.group, axis=1)] = np.nan

    def _finish(self, out: np.ndarray, residual: np.ndarray | None = None,
                epilogue=None) -> tuple[np.ndarray, bool]:
        """Bias and the fused Relu in place on a new [N, C_out, OH, OW] array; with the residual and
        the epilogue too, in the same compiled pass, where it can take them (then True): over a 1x1
        layer's 96 x 112 x 112 outputs each pass more cost a quarter of the product."""
        bias = None if self.bias is None else self.bias.reshape(-1)
        plane = out.shape[2] * out.shape[3]
        if ((residual is not None or epilogue is not None) and not self.relu
                and add_and_activate(out, bias, False, epilogue, plane=plane, residual=residual,
                                     threads=self.threads)):
            return out, True
        if add_and_activate(out, bias, self.relu, None, plane=plane, threads=self.threads):
            return out, False
        if self.bias is not None:
            out += self.bias
        if self.relu:
            relu(out, out=out)
        return out, False

    def _pointwise(self, x: np.ndarray, residual: np.ndarray | None, epilogue) -> tuple[np.ndarray, bool]:
        """1x1 convolution without padding: W [C_out, C_in] @ x [C_in, pixels] per sample needs no
        im2col, and its result is already NCHW (ResNet-50's 1x1 layers skip two copies each)."""
        if self.strides != (1, 1):  # the packed kernel copies this view: still faster than BLAS on it
            x = x[:, :, :: self.strides[0], :: self.strides[1]]  # (ResNet's downsample layers, kernel-choice.md)
        if self.packed is not None and pointconv.takes(x):
            return self._packed_conv(x, residual, epilogue)
        n, c, oh, ow = x.shape
        mm = self.mms[0]
        if mm.mode == "dense":
            y = blas.matmul(mm.w, x.reshape(n, c, oh * ow), self.threads)  # [N, C_out, pixels]
        else:  # batch 1
            y = mm.left(x.reshape(c, oh * ow))
        return self._finish(y.reshape(n, -1, oh, ow), residual, epilogue)

    def _packed_conv(self, x: np.ndarray, residual: np.ndarray | None, epilogue,
                     scale: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
        """The compiled 1x1 kernel (pointconv.py): bias, residual and the activation in its one store
        (another activation in place right after); (y, done) as ``_finish``. A residual it cannot
        take, or one that comes after a fused Relu, is left to the caller (done False)."""
        n, _, h, w = x.shape
        bias = None if self.bias is None else self.bias.reshape(-1)
        relu = ("relu", 0.0, 0.0) if self.relu else None
        run = lambda act, res: pointconv.pointwise_conv(x, self.packed, self.out_channels, bias, act, res, scale,
                                                        self.threads)
        if residual is not None and (self.relu or residual.shape != (n, self.out_channels, h, w)
                                     or residual.dtype != np.float32):
            return run(relu, None), False
        act = None if epilogue is None else epilogue.act
        fused = relu or (act if act is not None and act[0] in pointconv.ACTS else None)
        y = run(fused, None if residual is None else np.ascontiguousarray(residual))
        if epilogue is not None and fused is not act:
            y = epilogue(y)
        return y, True

    def describe(self) -> dict:
        kernel = ("direct" if self.direct is not None else "winograd" if self.winograd is not None
                  else "depthwise" if self.depthwise_weight is not None else "lanes" if self.lanes_weight is not None
                  else self.mode)
        known = {"density": self.density} if self.density is not None else {}  # None: a weight fed at run time
        if self.tuning or self.tuned:  # chosen by timing: "pending" until the first run
            known["tuned"] = self.tuned or "pending"
        if self.packed is not None:  # dense, through the compiled 1x1 kernel rather than BLAS
            known["product"] = "pointwise_conv"
        if self.dense_weight is not None:  # calls of few output pixels: the packed GEMM (pixel_gemm.py)
            known["few_pixels"] = "gemm_packed"
        return {"kernel": kernel, **known, "groups": self.group}
