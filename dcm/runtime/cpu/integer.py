"""The integer products of quantized ONNX models: MatMulInteger and ConvInteger (onnxruntime's dynamic
quantization of transformers and CNNs writes DynamicQuantizeLinear, then these, then a rescale),
QLinearMatMul and QLinearConv (its QOperator form).

The sums of products of 8-bit values are made in float64 on BLAS: exact while below 2^53 (an int8
product is at most 2^14, so any realistic depth), where numpy's integer matmul has no BLAS. The
requantization of QLinear* follows onnx's reference: the int32 sum times (scale_a * scale_b /
scale_y) in float32, rounded half to even, plus the zero point, saturated.
"""
from __future__ import annotations


import numpy as np

from dcm.runtime.cpu.registry import register
from dcm.runtime.cpu.shape import check_elements
from dcm.runtime.cpu.windows import axis_ints, output_size, resolve_pads, windows
from dcm.runtime.kernel import Kernel


def _centered(x: np.ndarray, zero_point: np.ndarray | None, axis: int | None = None) -> np.ndarray:
    """x - zero_point in float64; a vector zero point applies along ``axis`` (a row's, an output
    channel's), a scalar to all."""
    v = x.astype(np.float64)
    if zero_point is None:
        return v
    zp = np.asarray(zero_point, np.float64)
    if zp.size > 1 and axis is not None:
        shape = [1] * x.ndim
        shape[axis] = zp.size
        zp = zp.reshape(shape)
    return v - zp


def _exact(total: np.ndarray) -> np.ndarray:
    return np.rint(total).astype(np.int32)


def _requantize(total: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, like: np.dtype) -> np.ndarray:
    """An int32 sum rescaled (float32) to the output's integer type, as onnx's reference does."""
    y = total.astype(np.int32) * scale
    dtype = zero_point.dtype if zero_point is not None else like
    if zero_point is not None:
        y = y + zero_point
    info = np.iinfo(dtype)
    return np.clip(np.rint(y), info.min, info.max).astype(dtype)


def _matmul(a, a_zero, b, b_zero) -> np.ndarray:
    """(a - a_zero) @ (b - b_zero), exact; a vector a_zero is per row of a, b_zero per column of b."""
    return np.matmul(_centered(a, a_zero, a.ndim - 2 if a.ndim >= 2 else None), _centered(b, b_zero, b.ndim - 1))


def _conv(kernel: Kernel, x, x_zero, w, w_zero, bias=None) -> np.ndarray:
    """conv((x - x_zero), (w - w_zero)) (+ bias), exact, with Conv's attributes; w_zero may be per
    output channel."""
    if x.ndim < 3 or w.ndim != x.ndim:
        raise ValueError(f"input {list(x.shape)} and weight {list(w.shape)}: [N, C, *spatial] and [M, C/group, *k] expected")
    nd, group = x.ndim - 2, int(kernel.attrs.get("group", 1))
    ks = tuple(w.shape[2:])
    strides = tuple(axis_ints(kernel.attrs, "strides", nd, 1))
    dilations = tuple(axis_ints(kernel.attrs, "dilations", nd, 1))
    begin, end = resolve_pads(kernel.attrs, x.shape[2:], ks, strides, dilations)
    out = output_size(x.shape[2:], ks, strides, dilations, begin, end)
    n, c, m = x.shape[0], x.shape[1], w.shape[0]
    if c != w.shape[1] * group or m % group:
        raise ValueError(f"input of {c} channels, weight {list(w.shape)}, group {group}: they do not fit")
    check_elements([n, m, *out], "integer Conv output")
    xc = _centered(x, x_zero)  # padding then adds 0, which is x's zero point: as onnx pads the centred input
    v = windows(xc, ks, strides, dilations, begin, end)  # [N, C, *out, *k]
    wc = _centered(w, w_zero, 0)
    cg, mg = c // group, m // group
    parts = []
    for g in range(group):
        vg = v[:, g * cg : (g + 1) * cg]
        axes_v = [1, *range(2 + nd, 2 + 2 * nd)]  # channel and kernel axes
        parts.append(np.tensordot(vg, wc[g * mg : (g + 1) * mg], axes=(axes_v, [1, *range(2, 2 + nd)])))
    y = np.concatenate(parts, axis=-1) if group > 1 else parts[0]  # [N, *out, M]
    y = np.moveaxis(y, -1, 1)
    if bias is not None:
        y = y + np.asarray(bias, np.float64).reshape(1, -1, *([1] * nd))
    return y


@register("MatMulInteger")
class MatMulInteger(Kernel):
    def __call__(self, a, b, a_zero=None, b_zero=None):
        return (_exact(_matmul(a, a_zero, b, b_zero)),)


@register("ConvInteger")
class ConvInteger(Kernel):
    def __call__(self, x, w, x_zero=None, w_zero=None):
        return (_exact(_conv(self, x, x_zero, w, w_zero)),)


@register("QLinearMatMul")
class QLinearMatMul(Kernel):
    def __call__(self, a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero=None):
        total = _exact(_matmul(a, a_zero, b, b_zero))
        return (_requantize(total, a_scale * b_scale / y_scale, y_zero, a.dtype),)


@register("QLinearConv")
class QLinearConv(Kernel):
    def __call__(self, x, x_scale, x_zero, w, w_scale, w_zero, y_scale, y_zero=None, bias=None):
        total = _exact(_conv(self, x, x_zero, w, w_zero, bias))
        w_scale = np.asarray(w_scale)
        if w_scale.size > 1:  # per output channel
            w_scale = w_scale.reshape(1, -1, *([1] * (x.ndim - 2)))
        return (_requantize(total, x_scale * w_scale / y_scale, y_zero, x.dtype),)
