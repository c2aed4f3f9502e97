"""Kernels of the channels-last ops that ``dcm.runtime.channels_last`` writes: stem, depthwise, grouped
and 1x1 convolutions and the spatial mean on NHWC arrays.

A network's stem (few input channels) runs ``conv_nhwc_out`` (``_nhwc.c``), which reads the NCHW
input as it is and writes NHWC: no Transpose into the region. A grouped layer (ResNeXt's, RegNet's)
runs the same kernel on its NHWC input, group by group, and so does a small dense layer (one group of at
most ``channels_last.DENSE_MAX_CHANNELS`` channels, a window past 1x1). A depthwise layer runs the compiled
``depthwise_nhwc``: per output pixel, kh*kw multiply-adds of 16-channel vectors, the bias and the
activation in registers. A 1x1 layer is the product x [N*H*W, C_in] @ W.T on the packed GEMM
(``_gemm.c``'s ``gemm_packed``, the weight packed once here), which adds the bias, a fused residual
and the activation before its one store; a squeeze-and-excitation scale (``dcm.ScaledConv``) goes
into a copy of x or of the packed weight, whichever is smaller (in the kernel). The session fuses activations and
residual Adds into these as into ``Conv`` (``dcm.runtime.fusion``).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from dcm.runtime.channels_last import NHWC_CONV, NHWC_MEAN, NHWC_SCALED_CONV, NHWC_STEM, patch_layer
from dcm.runtime.cpu import matmul, memory, native, pointconv
from dcm.runtime.cpu.fused import register_internal
from dcm.runtime.cpu.windows import ints2, output_size, resolve_pads
from dcm.runtime.fusion import add_and_activate
from dcm.runtime.kernel import Kernel


# Where a pruned 1x1 layer takes the sparse kernel: from 4 panels of 64 pixels a thread (where the kernel
# packs each panel as it uses it) and 128 input channels. One layer at 30% kept, the two forms in turn,
# time against the packed GEMM's, 1 / 2 threads: 392 pixels x 400 -> 400 0.75 / 0.86, 1568 x 160 -> 160
# 0.72 / 0.78, 6272 x 160 -> 160 0.77 / 0.73, 3136 x 256 -> 64 1.01 / 0.94; at fewer pixels, where the
# threads split W's rows, it lost on 2 threads (49 x 400 -> 400 1.23, 196 x 160 -> 160 0.99); at 64
# inputs it came out either way (784 x 64 -> 160 0.70 / 0.82, 784 x 64 -> 64 1.09 / 1.07, 6272 x 64 -> 160
# 1.25 / 1.26).
SPARSE_MIN_PIXELS = 256
SPARSE_MIN_INPUTS = 128
# A patch layer (window = stride, no padding) of more outputs than this is a product over its gathered
# patches on the packed GEMM; up to it, conv_nhwc_out (one layer alone, one thread, batch 1, us: 40 -> 80
# 2x2/2 at 56x56 161 direct against 166 as patches, 64 -> 128 at 32x32 106 / 173, 80 -> 160 at 28x28
# 169 / 177; past it the direct kernel's output vectors spill: 160 -> 320 at 14x14 273 / 182, 256 -> 512
# 1140 / 446, 320 -> 640 1755 / 745).
PATCH_DIRECT_MAX_OUTPUTS = 160


def available() -> bool:
    """The compiled channels-last kernels are built and the packed GEMM runs here (AVX-512 or AVX2)."""
    return (native.depthwise_nhwc is not None and native.global_average_nhwc is not None
            and native.gemm_packed is not None and native.packed_simd() is not None)


def _strided_pixels(x: np.ndarray, strides: tuple[int, int], threads: int) -> np.ndarray:
    """x [N, H, W, C][:, ::sh, ::sw] as a new contiguous array: the compiled window_rows (a 1x1 window),
    split over the threads, where it is built; numpy's strided copy ran on one thread (RegNetX's
    stride-2 shortcuts on 2 threads: 35 -> 27 and 43 -> 29 us)."""
    if native.window_rows is None or x.dtype != np.float32:
        return np.ascontiguousarray(x[:, :: strides[0], :: strides[1]])
    n, h, w, c = x.shape
    oh, ow = (h - 1) // strides[0] + 1, (w - 1) // strides[1] + 1
    y = np.empty((n, oh, ow, c), np.float32)
    native.window_rows(np.ascontiguousarray(x), y.reshape(n * oh * ow, c), (n, h, w, c), (1, 1), tuple(strides),
                       (1, 1), (0, 0, 0, 0), threads=threads)
    return y


def _window_weight(w: np.ndarray, groups: int) -> np.ndarray:
    """A weight [C_out, C_in / groups, kh, kw] as conv_nhwc_out reads it: [groups, kh, kw, C_in / groups,
    C_out / groups rounded up to 16], each (tap, input channel) a row of whole vectors of a group's
    output weights (zeros past them)."""
    c_out, per_group, kh, kw = w.shape
    outs = c_out // groups
    packed = np.zeros((groups, kh, kw, per_group, -(-outs // 16) * 16), np.float32)
    packed[..., :outs] = w.reshape(groups, outs, per_group, kh, kw).transpose(0, 3, 4, 2, 1)
    return memory.aligned(packed)


def _nhwc_input(x: np.ndarray, channels: int, name: str) -> np.ndarray:
    if x.ndim != 4 or x.shape[3] != channels:
        raise ValueError(f"{name}: channels-last input of shape {list(x.shape)}, expected [N, H, W, {channels}]")
    return np.ascontiguousarray(x, dtype=np.float32)


class _Conv(Kernel):
    """What the channels-last convolutions share: the constant weight and bias, the window geometry,
    and the activation their compiled kernels apply before they store."""

    weight_inputs = (1, 2)
    fuses_relu = True

    def _load(self, node, ctx) -> np.ndarray:
        """The weight [C_out, C_in / group, kh, kw] as float32; sets the bias and the geometry."""
        w = np.asarray(ctx.const(node.inputs[1]), dtype=np.float32)
        b = ctx.opt_const(node, 2)
        self.out_channels = w.shape[0]
        if b is not None and b.size != self.out_channels:
            raise ValueError(f"bias of {b.size} values for {self.out_channels} outputs")
        self.bias = None if b is None else np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
        self.kernel = (w.shape[2], w.shape[3])
        self.strides = ints2(self.attrs, "strides", 2, 1)
        self.dilations = ints2(self.attrs, "dilations", 2, 1)
        self._sizes: dict[tuple[int, int], tuple[tuple[int, int, int, int], int, int]] = {}  # _window's
        return w

    def _window(self, h: int, w: int) -> tuple[tuple[int, int, int, int], int, int]:
        """(pads as top, left, bottom, right; OH; OW) for an H x W input, kept per size: a model's layer
        meets one or two, and working them out took a third of the Python a call costs."""
        found = self._sizes.get((h, w))
        if found is None:
            begin, end = resolve_pads(self.attrs, (h, w), self.kernel, self.strides, self.dilations)
            oh, ow = output_size((h, w), self.kernel, self.strides, self.dilations, begin, end)
            found = (begin[0], begin[1], end[0], end[1]), oh, ow
            if len(self._sizes) >= 16:
                self._sizes.clear()
            self._sizes[(h, w)] = found
        return found

    def _act(self, epilogue) -> tuple[str, float, float] | None:
        """The activation the compiled kernels apply themselves (None: none, or the caller's)."""
        if self.relu:
            return ("relu", 0.0, 0.0)
        act = None if epilogue is None else epilogue.act
        return act if act is not None and act[0] in pointconv.ACTS else None


@register_internal(NHWC_CONV)
class NhwcConv(_Conv):
    """Conv of an NHWC input into an NHWC output: depthwise (multiplier 1), grouped or small dense
    (``grouped``: conv_nhwc_out), or 1x1 without padding (a strided one, ResNet's shortcuts, on the
    pixels it reads, copied)."""

    fuses_residual = True
    residual_arg = 3  # after x, W and B
    available = staticmethod(available)

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        w = self._load(node, ctx)
        per_group, self.groups = w.shape[1], int(self.attrs.get("group", 1))
        self.depthwise = per_group == 1 and self.groups == self.out_channels
        # a wide patch layer: [patches, kh * kw * C_in] @ W on the packed GEMM (PATCH_DIRECT_MAX_OUTPUTS)
        self.patches = (self.groups == 1 and self.kernel != (1, 1) and patch_layer(self.attrs, self.kernel)
                        and self.out_channels > PATCH_DIRECT_MAX_OUTPUTS and native.packed_simd() is not None)
        # conv_nhwc_out's form: several groups, or one (a small dense layer) with a window past 1x1
        self.grouped = not self.depthwise and not self.patches and (self.groups > 1 or self.kernel != (1, 1))
        self._plans: dict[tuple[int, ...], tuple] = {}  # per input shape: what a call works out (_keep_plan)
        if self.depthwise:
            self.in_channels = self.out_channels
            self.weight = memory.aligned(w[:, 0].transpose(1, 2, 0))  # [kh, kw, C]: a vector per tap
        elif self.grouped:
            if self.out_channels % self.groups:
                raise ValueError(f"{self.out_channels} outputs not divisible by group {self.groups}")
            self.in_channels = per_group * self.groups
            self.weight = _window_weight(w, self.groups)
        elif self.patches:
            self.in_channels = per_group
            # [kh, kw, C_in, C_out] flattened: a patch's NHWC values in order times its outputs
            self.wt = np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(-1, self.out_channels))
            self.packed = matmul.packed_weight(self.wt)
        else:
            self.in_channels = per_group
            w2 = w.reshape(self.out_channels, per_group)
            self.wt = np.ascontiguousarray(w2.T)  # [C_in, C_out]
            self.packed = matmul.packed_weight(self.wt)
            self.density = np.count_nonzero(w2) / max(w2.size, 1)
            self.sparse = None  # a pruned layer's CSR form on the compiled sparse kernel
            if (native.SparseMatrix is not None and self.density <= matmul.SPARSE_MAX_DENSITY_MANY_ROWS
                    and per_group >= SPARSE_MIN_INPUTS and ctx.requested_mode(node, node.inputs[1]) != "dense"):
                self.sparse = matmul.WeightMatmul("sparse", sp.csr_array(w2), ctx.threads, prefer="right")

    def __call__(self, x, w=None, b=None, residual=None, scale=None):
        plan = self._plans.get(x.shape) if scale is None and type(x) is np.ndarray else None
        if plan is not None and (residual is None or plan[0] == "gemm"):
            try:
                return (self._run_plan(plan, x, residual),)
            except native.REFUSED:  # a float64 x, a strided view, SIMD turned off: the full path converts or says why
                self._plans.clear()
        y = self._call(x, residual, scale)
        if plan is None and scale is None and type(x) is np.ndarray:
            self._keep_plan(x)
        return y

    def _run_plan(self, plan: tuple, x: np.ndarray, residual: np.ndarray | None) -> np.ndarray:
        """The call as ``_keep_plan`` worked it out for x's shape: the compiled kernel straight away,
        which checks every buffer's type, layout and size itself. Arguments by position: keywords cost
        the call ~0.4 us more."""
        form, out_shape, rows, act = plan
        y = np.empty(out_shape, np.float32)
        if form == "gemm":  # x, packed, out, threads, bias, relu, act, residual
            native.gemm_packed(x.reshape(rows), self.packed, y.reshape(rows[0], -1), self.threads, self.bias, False,
                               act, residual)
        else:
            self._window_kernel(x, y, rows, act)
        return y

    def _keep_plan(self, x: np.ndarray) -> None:
        """Keep, for x's shape, what a call works out before its compiled kernel: the output's shape,
        the pads or the product's rows, the activation. A small network's layer costs ~2 us of Python
        beyond its kernel otherwise (the small MobileNetV2 at batch 1: 0.87x the time with plans).
        Only for the forms that need nothing else: float32 NHWC x of this layer's channels, the
        activation in the kernel, a 1x1 layer at stride 1 on the packed GEMM."""
        e = self.epilogue
        act = self._act(e)
        if x.dtype != np.float32 or x.ndim != 4 or x.shape[3] != self.in_channels or (e is not None and act is None):
            return
        n, h, w, c = x.shape
        if self.depthwise or self.grouped:
            pads, oh, ow = self._window(h, w)
            plan = ("depthwise" if self.depthwise else "grouped", (n, oh, ow, self.out_channels), pads, act)
        elif self.strides == (1, 1) and not self._takes_sparse(n * h * w, None) and native.packed_simd() is not None:
            plan = ("gemm", (n, h, w, self.out_channels), (n * h * w, c), act)
        else:
            return
        if len(self._plans) >= 16:
            self._plans.clear()
        self._plans[x.shape] = plan

    def _call(self, x, residual, scale) -> tuple:
        if not (self.depthwise or self.grouped or self.patches) and x.ndim == 4 and x.shape[1:] == (self.in_channels, 1, 1):
            # a [N, C, 1, 1] value (a squeeze-and-excitation branch): the same array in either layout
            return (self._call(x.reshape(-1, 1, 1, self.in_channels), residual, None)[0].reshape(-1, self.out_channels, 1, 1),)
        x = _nhwc_input(x, self.in_channels, self.node.name)
        e = self.epilogue
        act = self._act(e)
        if self.depthwise or self.grouped:
            y = self._windows(x, None if residual is not None else act)
            if residual is not None:  # a fused Add after a depthwise or grouped layer: one compiled pass
                if not add_and_activate(y, None, False, e, residual=np.ascontiguousarray(residual, np.float32),
                                        threads=self.threads):
                    np.add(y, residual, out=y)
                    y = y if e is None else e(y)
                return (y,)
        elif self.patches:
            y = self._patch_product(x, act, residual)
        else:
            y = self._pointwise(x, act, residual, scale)
        return (y if e is None or act is not None else e(y),)

    def _patch_product(self, x: np.ndarray, act, residual: np.ndarray | None) -> np.ndarray:
        """A patch layer as one product: each output pixel's kh x kw window of x, whose rows are runs of
        kw * C_in values, gathered into a row of the patch matrix, times the packed weight."""
        n, h, w, c = x.shape
        (kh, kw), oh, ow = self.kernel, h // self.kernel[0], w // self.kernel[1]
        rows, co = n * oh * ow, self.out_channels
        patches = np.ascontiguousarray(
            x[:, : oh * kh, : ow * kw].reshape(n, oh, kh, ow, kw * c).transpose(0, 1, 3, 2, 4)).reshape(rows, -1)
        if residual is not None:
            residual = np.ascontiguousarray(residual, dtype=np.float32).reshape(rows, co)
        y = np.empty((n, oh, ow, co), dtype=np.float32)
        self._product(patches, y.reshape(rows, co), act, residual)
        return y

    def _windows(self, x: np.ndarray, act) -> np.ndarray:
        """A depthwise or grouped layer's output, its activation applied."""
        n, h, w, _ = x.shape
        pads, oh, ow = self._window(h, w)
        y = np.empty((n, oh, ow, self.out_channels), dtype=np.float32)
        self._window_kernel(x, y, pads, act)
        return y

    def _window_kernel(self, x: np.ndarray, y: np.ndarray, pads: tuple[int, int, int, int], act) -> None:
        """y = the depthwise or conv_nhwc_out layer of NHWC x, its activation applied (arguments by
        position: keywords cost ~0.4 us a call)."""
        n, h, w, c = x.shape
        if self.depthwise:
            native.depthwise_nhwc(x, y, self.weight, (n, h, w, c), self.kernel, self.strides, self.dilations, pads,
                                  self.bias, act, self.threads)
        else:  # ..., bias, act, threads, groups, channels_last
            native.conv_nhwc_out(x, y, self.weight, (n, c, h, w, self.out_channels), self.kernel, self.strides,
                                 self.dilations, pads, self.bias, act, self.threads, self.groups, True)

    def _product(self, x2: np.ndarray, out2: np.ndarray, act, residual: np.ndarray | None,
                 scale: np.ndarray | None = None) -> None:
        """out2 = act((x2 * scale) [rows, k] @ W + bias + residual) on the packed GEMM; numpy where the
        CPU lost the kernel (``set_simd(False)`` after load)."""
        if native.packed_simd() is not None:
            native.gemm_packed(x2, self.packed, out2, self.threads, self.bias, act=act, residual=residual,
                               scale=scale)
            return
        if scale is not None:  # [N or 1, k]: one row of factors per sample's rows
            x2 = (x2.reshape(len(scale), -1, x2.shape[1]) * scale[:, None, :]).reshape(x2.shape)
        np.matmul(x2, self.wt, out=out2)
        native.activate(out2, out2, *(act or ("none", 0.0, 0.0)), bias=self.bias, residual=residual,
                        threads=self.threads)

    def _pointwise(self, x: np.ndarray, act, residual: np.ndarray | None, scale: np.ndarray | None) -> np.ndarray:
        """act((x * scale) @ W.T + bias + residual) on the packed GEMM. The scale [N or 1, C_in] (a
        squeeze-and-excitation gate) goes, in the kernel, into a copy of whichever is smaller, x or the
        packed weight (per sample): in the product's inner loop it halved its speed. numpy where the
        CPU lost the kernel (``set_simd(False)`` after load)."""
        if self.strides != (1, 1):  # the pixels a strided 1x1 layer reads: a quarter of x at stride 2
            x = _strided_pixels(x, self.strides, self.threads)
        n, h, w, c = x.shape
        m, co = n * h * w, self.out_channels
        if residual is not None:
            residual = np.ascontiguousarray(residual, dtype=np.float32).reshape(m, co)
        if self._takes_sparse(m, scale):
            return self._sparse_product(x.reshape(m, c), act, residual).reshape(n, h, w, co)
        y = np.empty((n, h, w, co), dtype=np.float32)
        self._product(x.reshape(m, c), y.reshape(m, co), act, residual, scale)
        return y

    def _takes_sparse(self, pixels: int, scale: np.ndarray | None) -> bool:
        """Whether a pruned 1x1 layer (of SPARSE_MIN_INPUTS input channels or more) multiplies this many
        pixels on its sparse form: where the sparse kernel streams its panels (SPARSE_MIN_PIXELS a
        thread) and the fully connected layers' break-even points allow (``matmul.prefers_dense``:
        density, inputs, outputs x density). A squeeze-and-excitation scale goes to the packed GEMM,
        which takes it."""
        return (self.sparse is not None and scale is None and pixels >= SPARSE_MIN_PIXELS * self.threads
                and not matmul.prefers_dense(self.density, pixels, self.wt.size, self.in_channels, self.out_channels))

    def _sparse_product(self, x: np.ndarray, act, residual: np.ndarray | None) -> np.ndarray:
        """act(x [pixels, C_in] @ W.T + bias + residual) on the compiled sparse kernel, which adds the
        bias and applies a ReLU as it writes each row; a residual or another activation is one compiled
        pass after it."""
        in_kernel = act is not None and act[0] == "relu" and residual is None
        y = self.sparse.fused_right(x, self.bias, in_kernel)
        if residual is not None or (act is not None and not in_kernel):
            native.activate(y, y, *(act or ("none", 0.0, 0.0)), residual=residual, threads=self.threads)
        return y

    def describe(self) -> dict:
        if self.depthwise:
            return {"kernel": "depthwise", "layout": "nhwc"}
        if self.grouped:
            return {"kernel": "grouped" if self.groups > 1 else "direct", "layout": "nhwc", "groups": self.groups}
        if self.patches:
            return {"kernel": "dense", "layout": "nhwc", "product": "gemm_packed over patches"}
        if self.sparse is not None:  # which form a call takes depends on its pixel count
            return {"kernel": "sparse", "layout": "nhwc", "density": self.density,
                    "product": "matmat_rows, gemm_packed by pixel count"}
        return {"kernel": "dense", "layout": "nhwc", "product": "gemm_packed"}


@register_internal(NHWC_SCALED_CONV)
class NhwcScaledConv(NhwcConv):
    """``dcm.ScaledConv`` channels-last: x (NHWC) times a per-channel scale s [N or 1, C, 1, 1], convolved
    1x1; any other factor is broadcast against x as the Mul would be (moved to NHWC axes)."""

    residual_arg = 4  # after x, W, B and s

    def __call__(self, x, w=None, b=None, s=None, residual=None):
        x = _nhwc_input(x, self.in_channels, self.node.name)
        n, _, _, c = x.shape
        if s.dtype == np.float32 and s.ndim == 4 and s.shape[1:] == (c, 1, 1) and s.shape[0] in (1, n):
            return super().__call__(x, residual=residual, scale=np.ascontiguousarray(s.reshape(-1, c)))
        s = np.asarray(s).reshape((1,) * (4 - np.ndim(s)) + np.shape(s)).transpose(0, 2, 3, 1)
        return super().__call__(np.multiply(x, s, dtype=np.float32), residual=residual)


@register_internal(NHWC_MEAN)
class NhwcGlobalAveragePool(Kernel):
    """The mean over H and W of NHWC x: [N, C, 1, 1], the same array in either layout."""

    available = staticmethod(available)

    def __call__(self, x):
        if x.ndim != 4:
            raise ValueError(f"channels-last input of rank {x.ndim}, expected 4")
        n, h, w, c = x.shape
        y = np.empty((n, c), dtype=np.float32)
        native.global_average_nhwc(np.ascontiguousarray(x, dtype=np.float32).reshape(n, h * w, c), y, (n, h * w, c),
                                   threads=self.threads)
        return (y.reshape(n, c, 1, 1).astype(x.dtype, copy=False),)


@register_internal(NHWC_STEM)
class NhwcStemConv(_Conv):
    """Conv of an NCHW input with few channels (a network's first layer) into an NHWC output."""

    available = staticmethod(available)

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        w = self._load(node, ctx)  # [C_out, C_in, kh, kw]
        self.in_channels = w.shape[1]
        self.weight = _window_weight(w, 1)

    def __call__(self, x, w=None, b=None):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{self.node.name}: input of shape {list(x.shape)}, expected [N, {self.in_channels}, H, W]")
        x = np.ascontiguousarray(x, dtype=np.float32)
        n, c, h, w_ = x.shape
        pads, oh, ow = self._window(h, w_)
        act = self._act(self.epilogue)
        y = np.empty((n, oh, ow, self.out_channels), dtype=np.float32)
        native.conv_nhwc_out(x, y, self.weight, (n, c, h, w_, self.out_channels), self.kernel, self.strides,
                             self.dilations, pads, self.bias, act, threads=self.threads)
        return (y if self.epilogue is None or act is not None else self.epilogue(y),)

    def describe(self) -> dict:
        return {"kernel": "direct", "layout": "nchw -> nhwc"}
