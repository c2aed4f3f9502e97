"""QuantizeLinear and DequantizeLinear, the Q/DQ pairs of an int8-quantized ONNX model (and
DynamicQuantizeLinear, the first step of a dynamically quantized one): a scale and zero point per
tensor, per channel along ``axis``, or per block of ``block_size`` values along it (opset 21). The
integer types are the ones a .dcm stores (int8, uint8, int16, and int32 for a bias to dequantize);
float8, 4-bit and uint16 ones are refused at conversion with the type named.

A quantized weight (a constant behind a DequantizeLinear) folds to float32 at conversion and is then
coded like any other weight; the pairs on activations run here, in float32, as onnx's reference
computes them: y = (x - zero_point) * scale, and q = clip(round_half_even(x / scale) + zero_point).
"""
from __future__ import annotations

import numpy as np

from dcm.errors import UnsupportedOpError
from dcm.runtime.cpu.registry import register
from dcm.runtime.cpu.shape import ONNX_NUMPY, normal_axis
from dcm.runtime.kernel import Kernel

QUANTIZED = {np.dtype(t): (np.iinfo(t).min, np.iinfo(t).max) for t in (np.uint8, np.int8, np.int16)}  # type: range
DEQUANTIZED = (*QUANTIZED, np.dtype(np.int32))  # (an int32 bias is dequantized too)


def broadcast_param(value: np.ndarray, shape: tuple[int, ...], axis: int, block_size: int, what: str) -> np.ndarray:
    """A scale or zero point as an array that broadcasts against x of ``shape``: a scalar (or a single
    value) as it is, a vector along ``axis``, or with ``block_size`` each value repeated over its block
    of ``axis`` (the last block may be short)."""
    if value.size == 1 and value.ndim <= 1:
        return value.reshape(())
    axis = normal_axis(axis, len(shape))
    if not block_size:
        if value.ndim != 1 or value.size != shape[axis]:
            raise ValueError(f"{what} of shape {list(value.shape)} for axis {axis} of an input {list(shape)}")
        dims = [1] * len(shape)
        dims[axis] = value.size
        return value.reshape(dims)
    blocks = -(-shape[axis] // block_size)
    expected = [*shape[:axis], blocks, *shape[axis + 1 :]]
    if list(value.shape) != expected:
        raise ValueError(f"{what} of shape {list(value.shape)} for blocks of {block_size} along axis {axis} of an "
                         f"input {list(shape)} (expected {expected})")
    return np.repeat(value, block_size, axis=axis).take(range(shape[axis]), axis=axis)


class _Linear(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.out = self._output_type(node)

    def _param(self, value: np.ndarray, x: np.ndarray, what: str) -> np.ndarray:
        return broadcast_param(np.asarray(value), x.shape, int(self.attrs.get("axis", 1)),
                               int(self.attrs.get("block_size", 0)), what)

    def _output_type(self, node) -> np.dtype | None:
        """The ``output_dtype`` attribute's type (opset 21/23), None where it is not set."""
        code = int(self.attrs.get("output_dtype", 0))
        if code and code not in ONNX_NUMPY:
            raise UnsupportedOpError(f"{node.op} {node.name!r}: output type {code} is not supported")
        return np.dtype(ONNX_NUMPY[code]) if code else None


@register("DequantizeLinear")
class DequantizeLinear(_Linear):
    def __call__(self, x, scale, zero_point=None):
        if x.dtype not in DEQUANTIZED:
            raise ValueError(f"input of type {x.dtype}: int8, uint8, int16 or int32 expected")
        dx = x.astype(np.float32)
        if zero_point is not None:
            if zero_point.dtype != x.dtype:
                raise ValueError(f"zero point of type {zero_point.dtype} for an input of type {x.dtype}")
            dx -= self._param(zero_point, x, "zero point")
        y = dx * self._param(scale, x, "scale")
        return (y.astype(self.out or scale.dtype, copy=False),)


@register("QuantizeLinear")
class QuantizeLinear(_Linear):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        if self.out is not None and self.out not in QUANTIZED:
            raise UnsupportedOpError(f"QuantizeLinear {node.name!r}: output type {self.out} is not supported")

    def __call__(self, x, scale, zero_point=None):
        out = zero_point.dtype if zero_point is not None else self.out or np.dtype(np.uint8)
        if zero_point is not None and self.out is not None and self.out != out:
            raise ValueError(f"output_dtype {self.out} and the zero point's type {out} differ")
        if out not in QUANTIZED:
            raise ValueError(f"zero point of type {out}: uint8, int8 or int16 expected")
        q = np.rint(x / self._param(scale, x, "scale"))
        if zero_point is not None:
            q += self._param(zero_point, x, "zero point")
        low, high = QUANTIZED[out]
        return (np.clip(q, low, high).astype(out),)


@register("DynamicQuantizeLinear")
class DynamicQuantizeLinear(Kernel):
    """x to uint8 on the scale and zero point of its own range (0 always inside it), as onnxruntime's
    dynamic quantization feeds MatMulInteger: (y, scale, zero point). A kernel, not the ONNX function
    body: the body is written at opset 11, whose Reduce ops mean something else from opset 13/18."""

    def __call__(self, x):
        high = np.float32(max(0.0, float(np.max(x)) if x.size else 0.0))
        low = np.float32(min(0.0, float(np.min(x)) if x.size else 0.0))
        scale = np.float32(1.0 if high == low else high - low) / np.float32(255)
        zero = np.rint(np.clip(np.float32(0) - low / scale, 0, 255))
        y = np.clip(np.rint(x / scale) + zero, 0, 255)
        return y.astype(np.uint8), np.array(scale, dtype=x.dtype), np.array(zero, dtype=np.uint8)
