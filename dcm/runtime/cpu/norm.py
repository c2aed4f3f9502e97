"""Normalizations: BatchNormalization (inference), LayerNormalization, RMSNormalization,
InstanceNormalization, GroupNormalization, LpNormalization, MeanVarianceNormalization and LRN."""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.array_utils import normalize_axis_index, normalize_axis_tuple

from dcm.errors import UnsupportedOpError
from dcm.runtime.cpu import native
from dcm.runtime.cpu.elementwise import check_broadcast
from dcm.runtime.cpu.pointwise import compiled
from dcm.runtime.cpu.registry import register
from dcm.runtime.kernel import Kernel


def _stash_dtype(node) -> type:
    """The float type statistics are computed in: ``stash_type`` (1: float32, 11: float64)."""
    stash = node.attrs.get("stash_type", 1)
    if stash not in (1, 11):
        raise UnsupportedOpError(f"node {node.name!r} ({node.op}): stash_type {stash} is not supported "
                                 "(1: float32, 11: float64)")
    return np.float32 if stash == 1 else np.float64


# Rows up to this long take their sum of squares from einsum, without a squared copy; its plain
# accumulation loses digits on longer rows (float32 variance off by 1e-6 at 8192 values, 7e-5 at
# 2^20), where numpy's pairwise sum of a squared copy stays near 1e-7.
EINSUM_MAX_COLS = 4096


def _standardize_rows(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row of the matrix ``x`` standardized: ((x - mean) / sqrt(var + eps), mean, 1 / sqrt(var + eps)),
    statistics of shape (rows, 1). Every normalization here reduces trailing axes, hence rows. One
    new array of x's size for short rows: fresh temporaries cost a page fault per page on every call."""
    cols = x.shape[1]
    mean = x.sum(axis=1, keepdims=True) / cols
    d = np.subtract(x, mean)
    if cols <= EINSUM_MAX_COLS:
        var = np.einsum("ij,ij->i", d, d)[:, None] / cols
    else:
        var = np.square(d).sum(axis=1, keepdims=True) / cols
    inv = 1 / np.sqrt(var + eps)
    d *= inv
    return d, mean, inv


def _compute_dtype(x: np.ndarray) -> type:
    """float64 stays float64; float16 (and anything else) is computed in float32, as onnxruntime does."""
    return np.float64 if x.dtype == np.float64 else np.float32


@register("BatchNormalization")
class BatchNormalization(Kernel):
    """y = (x - mean) / sqrt(var + eps) * scale + bias, folded into y = x * a + b: at load when the
    statistics are constants (always, in an exported network), on every run otherwise.

    Inference only: the training form (running statistics as extra outputs) is refused at load.
    Statistics of rank > 1 (opset 7's ``spatial=0``) hold one value per activation instead of per channel.

    A BatchNormalization that no Conv before it absorbed (DenseNet's and pre-activation ResNets' come
    after a Concat or an Add) takes the Relu or other activation after it (``dcm.runtime.fusion``):
    scale, shift and activation in one compiled pass over float32 (``_pointwise.c``'s activate), where
    numpy took three (DenseNet-121-style, 224x224, batch 1: 8.2 ms of 49 in BatchNormalization and Relu
    steps; onnxruntime runs them as a depthwise 1x1 convolution with the activation fused).
    """

    fuses_relu = True

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        if len(node.inputs) != 5:
            raise UnsupportedOpError(f"node {node.name!r} (BatchNormalization): takes 5 inputs (x, scale, bias, "
                                     f"mean, var), the graph gives {len(node.inputs)}")
        if self.attrs.get("training_mode", 0) or any(node.outputs[1:]):
            raise UnsupportedOpError(f"node {node.name!r} (BatchNormalization): training mode (batch statistics "
                                     "and running-mean outputs) is not supported; export the model in inference mode")
        self.eps = float(self.attrs.get("epsilon", 1e-5))
        self.folded = self.a = self.b = None  # (float64 a, b), and a, b in float32: None when computed per run
        if all(ctx.is_const(name) for name in node.inputs[1:]):
            self.weight_inputs = (1, 2, 3, 4)
            self.folded = self._fold(*(ctx.const(name) for name in node.inputs[1:]))
            self.a, self.b = (v.astype(np.float32) for v in self.folded)

    def _fold(self, scale, bias, mean, var) -> tuple[np.ndarray, np.ndarray]:
        scale, bias, mean, var = (np.asarray(v, dtype=np.float64) for v in (scale, bias, mean, var))
        a = scale / np.sqrt(var + self.eps)
        return a, bias - mean * a

    def __call__(self, x, scale=None, bias=None, mean=None, var=None):
        if self.a is not None and x.dtype == self.a.dtype:  # float32 (the GPU backend's tensors too)
            a, b = self.a, self.b
        else:
            a, b = (v.astype(x.dtype) for v in (self.folded or self._fold(scale, bias, mean, var)))
            check_broadcast(x, a)  # statistics fed at run time may have any shape
        act = ("relu", 0.0, 0.0) if self.relu else ("none", 0.0, 0.0) if self.epilogue is None else self.epilogue.act
        if act is not None and a.ndim == 1 and x.ndim >= 2 and x.shape[1] == a.size and compiled(x):
            y = np.empty_like(x)
            native.activate(x, y, *act, bias=b, scale=a, plane=math.prod(x.shape[2:]), threads=self.threads)
            return (y,)
        shape = (1, -1) + (1,) * (x.ndim - 2) if a.ndim == 1 else (1,) + tuple(a.shape)
        y = x * a.reshape(shape)
        y += b.reshape(shape)  # in place: one temporary fewer
        if self.relu:
            np.maximum(y, 0, out=y)
        return (y if self.epilogue is None else self.epilogue(y),)


@register("LayerNormalization")
class LayerNormalization(Kernel):
    """Standardize over the axes from ``axis`` on, in ``stash_type`` precision (float32 by default,
    whatever the input's type), then y = normalized * scale + bias in the input's type. The optional
    Mean and InvStdDev outputs are in the stash type, with the reduced axes kept as size 1.

    float32 with float32 statistics takes the compiled kernel (``_pointwise.c``): each row's three
    passes stay in cache, where numpy's eight whole-array steps each made a new array (BERT's 9
    LayerNorms of 128 x 256: 0.8 ms against onnxruntime's 0.2). The graph pass ``fuse_layer_norm``
    writes this op for LayerNorms exported as separate steps."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = int(self.attrs.get("axis", -1))
        self.eps = float(self.attrs.get("epsilon", 1e-5))
        self.stash = _stash_dtype(node)
        self.wants_stats = any(node.outputs[1:])  # Mean or InvStdDev read: a model's LayerNorms seldom do
        # per x shape, after a call on the compiled kernel: (columns, scale's shape, bias's shape or None)
        self._plans: dict[tuple[int, ...], tuple] = {}

    def __call__(self, x, scale, bias=None):
        plan = self._plans.get(x.shape) if type(x) is np.ndarray and not self.wants_stats else None
        if plan is not None and scale.shape == plan[1] and (None if bias is None else bias.shape) == plan[2]:
            # x's shape seen before with these shapes of scale and bias (all the checks below passed):
            # the compiled kernel straight away, which refuses what it cannot take (~4 us of Python less)
            y = np.empty_like(x)
            try:
                native.layer_norm(x, y, plan[0], scale, bias, self.eps, None, None, self.threads)  # by position
                return (y,)
            except native.REFUSED:  # a float64 or strided operand: the full path converts it
                self._plans.clear()
        return self._call(x, scale, bias)

    def _call(self, x, scale, bias):
        axis = normalize_axis_index(self.axis, x.ndim)
        rows = math.prod(x.shape[:axis])
        stats = x.shape[:axis] + (1,) * (x.ndim - axis)
        if self.stash is np.float32 and x.size and compiled(x) and all(
                v is None or self._flat(v, x, axis) for v in (scale, bias)):
            y, mean, inv = np.empty_like(x), np.empty(stats, np.float32), np.empty(stats, np.float32)
            native.layer_norm(x, y, x.size // rows, np.ascontiguousarray(scale),
                              None if bias is None else np.ascontiguousarray(bias), self.eps, mean, inv,
                              self.threads)
            if len(self._plans) >= 16:
                self._plans.clear()
            self._plans[x.shape] = (x.size // rows, scale.shape, None if bias is None else bias.shape)
            return y, mean, inv
        y, mean, inv = _standardize_rows(x.astype(self.stash, copy=False).reshape(rows, -1), self.eps)
        y = y.reshape(x.shape).astype(x.dtype, copy=False)
        y *= scale
        if bias is not None:
            y += bias
        return y, mean.reshape(stats), inv.reshape(stats)

    @staticmethod
    def _flat(v: np.ndarray, x: np.ndarray, axis: int) -> bool:
        """v (scale or bias) holds one float32 value per normalized position, in x's order: as many
        values as the axes from ``axis`` on, its shape (leading 1s aside) x's last axes. Shapes
        compared as tuples: np.broadcast_shapes took 2.6 us, a tenth of a 128 x 256 LayerNorm."""
        shape = v.shape
        while shape and shape[0] == 1:
            shape = shape[1:]
        return (v.dtype == np.float32 and v.ndim <= x.ndim and v.size == math.prod(x.shape[axis:])
                and shape == x.shape[x.ndim - len(shape):])


@register("RMSNormalization")
class RMSNormalization(LayerNormalization):
    """ONNX's RMSNormalization (opset 23): y = x / sqrt(mean of x^2 over the axes from ``axis`` on +
    epsilon) * scale, the statistic in ``stash_type`` precision, y in the input's type. LLaMA's and T5's
    norm; the graph pass ``fuse_rms_norm`` writes it for the steps torch exports. float32 with float32
    statistics takes the compiled LayerNormalization kernel without its mean (``rms=True``)."""

    def __call__(self, x, scale):
        axis = normalize_axis_index(self.axis, x.ndim)
        rows, cols = math.prod(x.shape[:axis]), math.prod(x.shape[axis:])
        if self.stash is np.float32 and x.size and compiled(x) and self._flat(scale, x, axis):
            y = np.empty_like(x)
            native.layer_norm(x, y, cols, np.ascontiguousarray(scale), None, self.eps, threads=self.threads,
                              rms=True)
            return (y,)
        r = x.astype(self.stash, copy=False).reshape(rows, cols)
        inv = 1 / np.sqrt(np.square(r).sum(axis=1, keepdims=True) / max(cols, 1) + self.eps)
        return ((r * inv).reshape(x.shape).astype(x.dtype, copy=False) * scale,)


@register("InstanceNormalization")
class InstanceNormalization(Kernel):
    """Standardize each (sample, channel) over its spatial axes, then scale and shift per channel."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.eps = float(self.attrs.get("epsilon", 1e-5))

    def __call__(self, x, scale, bias):
        if x.ndim < 3:
            raise ValueError(f"input must have rank >= 3 (N, C, D1, ...), got shape {list(x.shape)}")
        n, c = x.shape[:2]
        y, _, _ = _standardize_rows(x.astype(_compute_dtype(x), copy=False).reshape(n * c, -1), self.eps)
        y = y.reshape(n, c, -1)
        y *= scale.reshape(-1, 1)
        y += bias.reshape(-1, 1)
        return (y.reshape(x.shape).astype(x.dtype, copy=False),)


@register("GroupNormalization")
class GroupNormalization(Kernel):
    """Standardize each sample's channels in ``num_groups`` groups; then scale and shift per group
    (opset 18: scale and bias have num_groups values) or per channel (opset 21: C values)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.groups = int(self.attrs["num_groups"])
        self.eps = float(self.attrs.get("epsilon", 1e-5))
        self.stash = _stash_dtype(node)
        self.per_channel = ctx.model.opset >= 21

    def __call__(self, x, scale, bias):
        n, c = x.shape[:2] if x.ndim >= 2 else (0, 0)
        if x.ndim < 2 or c % self.groups:
            raise ValueError(f"input of shape {list(x.shape)} cannot be split into {self.groups} channel groups")
        want = c if self.per_channel else self.groups
        if scale.size != want or bias.size != want:
            raise ValueError(f"scale and bias must have {want} values ({'channels' if self.per_channel else 'groups'}), "
                             f"got {scale.size} and {bias.size}")
        y, _, _ = _standardize_rows(x.astype(self.stash, copy=False).reshape(n * self.groups, -1), self.eps)
        y = y.reshape(n, want, -1).astype(x.dtype, copy=False)
        y *= scale.reshape(-1, 1)
        y += bias.reshape(-1, 1)
        return (y.reshape(x.shape),)


@register("LpNormalization")
class LpNormalization(Kernel):
    """x divided by its L1 or L2 norm (``p``) along ``axis``; 0 where the norm is 0."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = int(self.attrs.get("axis", -1))
        self.p = int(self.attrs.get("p", 2))
        if self.p not in (1, 2):
            raise ValueError(f"p must be 1 or 2, got {self.p}")

    def __call__(self, x):
        axis = normalize_axis_index(self.axis, x.ndim)
        if self.p == 1:
            norm = np.sum(np.abs(x), axis=axis, keepdims=True)
        else:
            norm = np.sqrt(np.sum(np.square(x), axis=axis, keepdims=True))
        return (np.where(norm == 0, 0, x / norm).astype(x.dtype, copy=False),)


@register("MeanVarianceNormalization")
class MeanVarianceNormalization(Kernel):
    """(x - mean) / (std + 1e-9) over ``axes`` (default 0, 2, 3: per channel of an NCHW batch)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axes = self.attrs.get("axes", [0, 2, 3])

    def __call__(self, x):
        axes = normalize_axis_tuple(self.axes, x.ndim)
        d = x - x.mean(axis=axes, keepdims=True)
        std = np.sqrt(np.mean(np.square(d), axis=axes, keepdims=True))
        std += 1e-9
        d /= std
        return (d,)


@register("LRN")
class LRN(Kernel):
    """y = x / (bias + alpha / size * sum of x^2 over ``size`` neighbouring channels) ** beta.

    The window sum is ``size`` - 1 shifted in-place adds in float32, and beta = 0.75 (AlexNet's)
    is two square roots: 4x faster than a float64 cumulative sum and ``np.power`` (AlexNet's
    first LRN: 3.2 ms of a 24 ms batch-1 run before).
    """

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.size = int(self.attrs["size"])
        self.alpha = float(self.attrs.get("alpha", 1e-4))
        self.beta = float(self.attrs.get("beta", 0.75))
        self.bias = float(self.attrs.get("bias", 1.0))

    def __call__(self, x):
        x = x.astype(np.float32, copy=False)
        sq = np.square(x)
        t = sq.copy()
        below = (self.size - 1) // 2  # channels c - below .. c + above (ONNX: floor / ceil)
        for k in range(1, below + 1):
            t[:, k:] += sq[:, :-k]
        for k in range(1, self.size - below):
            t[:, :-k] += sq[:, k:]
        t *= np.float32(self.alpha / self.size)
        t += np.float32(self.bias)
        if self.beta == 0.75:  # t ** 0.75 = sqrt(t) * sqrt(sqrt(t))
            r = np.sqrt(t, out=sq)
            np.sqrt(r, out=t)
            t *= r
        elif self.beta == 0.5:
            np.sqrt(t, out=t)
        else:
            np.power(t, np.float32(self.beta), out=t)
        return (np.divide(x, t, out=t),)
