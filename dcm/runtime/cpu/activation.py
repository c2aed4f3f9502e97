"""Pointwise activations and the softmax family.

Every activation keeps its input's dtype: constants are Python floats, which numpy's promotion
rules (NEP 50) fold into the array's type, so float32 stays float32 as in onnxruntime.

A float32 C-contiguous array goes through the compiled kernels of ``_pointwise.c`` (one pass where
numpy makes one per step: a GELU is about 20); other types, and builds without a C compiler, take the
numpy paths. A kernel's ``act`` names its compiled form (``dcm.runtime.cpu.pointwise``).
"""
from __future__ import annotations

import math

import numpy as np
import scipy.special
from numpy.lib.array_utils import normalize_axis_index

from dcm.runtime.cpu import native
from dcm.runtime.cpu.pointwise import activate, compiled
from dcm.runtime.cpu.registry import register
from dcm.runtime.cpu.special import erf32
from dcm.runtime.kernel import Kernel


CLIP_MIN_SIZE = 1 << 14
_ZERO, _INF = np.float32(0), np.float32(np.inf)


def relu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """max(x, 0), NaN kept. Large arrays go through ``np.clip(x, 0, inf)``, whose SIMD loop is 3x
    faster than ``np.maximum`` with numpy 2.4 (0.05 vs 0.15 ms on 400k values; ``np.clip(x, 0, None)``
    is as slow as ``np.maximum``); small ones through ``np.maximum``, which costs 2 us less per call."""
    if x.size >= CLIP_MIN_SIZE:
        return np.clip(x, _ZERO, _INF, out=out)
    return np.maximum(x, _ZERO, out=out)


def _attr(kernel: Kernel, name: str, default: float) -> float:
    """A float attribute. ONNX stores them in 32 bits, so a default means its nearest float32
    (alpha = 0.2 is 0.20000000298...), which is what a float64 input is computed with."""
    return float(kernel.attrs.get(name, np.float32(default)))


@register("Relu")
class Relu(Kernel):
    quiet = True  # np.clip and np.maximum keep NaN without a warning

    def __call__(self, x):
        if x.dtype == np.float32:
            return (relu(x),)
        return (np.maximum(x, x.dtype.type(0)),)  # float16/64 and integers keep their type


@register("LeakyRelu")
class LeakyRelu(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.act = ("leakyrelu", _attr(self, "alpha", 0.01), 0.0)

    def __call__(self, x):
        if compiled(x):
            return (activate(x, self.act, self.threads),)
        alpha = x.dtype.type(self.act[1])
        if 0 <= alpha <= 1:  # max(x, alpha x): two passes instead of np.where's four (22x -> 3x onnxruntime)
            y = x * alpha
            return (np.maximum(x, y, out=y),)
        return (np.where(x >= 0, x, x * alpha),)


@register("Sigmoid")
class Sigmoid(Kernel):
    act = ("sigmoid", 0.0, 0.0)

    def __call__(self, x):
        if compiled(x):
            return (activate(x, self.act, self.threads),)
        y = np.negative(x)  # the only new array (see _SoftmaxBase)
        with np.errstate(over="ignore"):
            np.exp(y, out=y)
        y += 1
        return (np.reciprocal(y, out=y),)


@register("Tanh")
class Tanh(Kernel):
    def __call__(self, x):
        return (np.tanh(x),)


@register("Clip")
class Clip(Kernel):
    """Bounds are attributes before opset 11 and (constant or runtime) scalar inputs after."""

    def __call__(self, x, lo=None, hi=None):
        lo = self.attrs.get("min") if lo is None else lo
        hi = self.attrs.get("max") if hi is None else hi
        if x.dtype.kind == "f":  # both bounds given keeps np.clip on its fast loop
            lo, hi = (-np.inf if lo is None else lo), (np.inf if hi is None else hi)
            return (np.clip(x, _scalar(lo, x.dtype), _scalar(hi, x.dtype)),)
        y = np.array(x) if lo is None else np.maximum(x, _scalar(lo, x.dtype))  # a new array either way
        if hi is not None:
            np.minimum(y, _scalar(hi, x.dtype), out=y)
        return (y,)


def _scalar(value, dtype: np.dtype) -> np.ndarray:
    """A Clip bound as a 0-D array of x's type (a bound with more values would broadcast x)."""
    a = np.asarray(value, dtype=dtype)
    if a.size != 1:
        raise ValueError(f"Clip bounds must be scalars, got shape {list(a.shape)}")
    return a.reshape(())


class _SoftmaxBase(Kernel):
    """Opset >= 13: along ``axis`` (default -1). Older: on the input flattened to 2-D at ``axis`` (default 1)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.legacy = ctx.model.opset < 13
        self.axis = int(self.attrs.get("axis", 1 if self.legacy else -1))

    def _view(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        """(x, or its 2-D form before opset 13; the axis to normalize along)."""
        axis = normalize_axis_index(self.axis, max(x.ndim, 1))
        if self.legacy:
            return x.reshape(math.prod(x.shape[:axis]), -1), 1
        return x, axis

    def _apply(self, x, log: bool):
        shape = x.shape
        x, axis = self._view(x)
        if axis == x.ndim - 1 and x.size and compiled(x):  # the last axis: rows, compiled
            y = np.empty(shape, np.float32)
            native.softmax(x, y, x.shape[-1], log, self.threads)
            return (y,)
        # One array, updated in place: several fresh temporaries of this size were each page-faulted
        # in again on every call (glibc trims its heap top), 3.3 ms instead of 0.5 for 400k values.
        # float64 is computed in float64. float16 Softmax rounds every step to float16, as ONNX's
        # reference does: its backend cases (attention_4d_causal_fp16) expect those values, which
        # differ by 2 ulp from a float32 computation rounded once. Other types compute in float32.
        work = x.dtype if x.dtype == np.float64 or (x.dtype == np.float16 and not log) else np.float32
        y = np.subtract(x, x.max(axis=axis, keepdims=True), dtype=work)
        if log:
            y -= np.log(np.exp(y).sum(axis=axis, keepdims=True))
        else:
            np.exp(y, out=y)
            y /= y.sum(axis=axis, keepdims=True)
        return (y.reshape(shape).astype(x.dtype, copy=False),)


@register("Softmax")
class Softmax(_SoftmaxBase):
    def __call__(self, x):
        return self._apply(x, log=False)


@register("LogSoftmax")
class LogSoftmax(_SoftmaxBase):
    def __call__(self, x):
        return self._apply(x, log=True)


@register("Hardmax")
class Hardmax(_SoftmaxBase):
    """1 at the first maximum along the axis, 0 elsewhere (the same axis rules as Softmax)."""

    quiet = True

    def __call__(self, x):
        v, axis = self._view(x)
        y = np.zeros_like(v)
        np.put_along_axis(y, np.argmax(v, axis=axis, keepdims=True), 1, axis)
        return (y.reshape(x.shape),)


@register("Shrink")
class Shrink(Kernel):
    """x - bias above lambd, x + bias below -lambd, 0 between."""

    def __call__(self, x):
        lambd, bias = _attr(self, "lambd", 0.5), _attr(self, "bias", 0.0)
        y = np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0))
        return (y.astype(x.dtype, copy=False),)  # integers: bias is a float


def _expm1_below_zero(x: np.ndarray) -> np.ndarray:
    """exp(x) - 1 where x < 0, 0 elsewhere (NaN kept): the exponential never sees a large x, so it
    cannot overflow on the branch that np.where throws away."""
    return np.expm1(np.minimum(x, 0))


@register("Elu")
class Elu(Kernel):
    def __call__(self, x):
        alpha = _attr(self, "alpha", 1.0)
        return (np.where(x > 0, x, alpha * _expm1_below_zero(x)),)


@register("Selu")
class Selu(Kernel):
    def __call__(self, x):
        alpha = _attr(self, "alpha", 1.67326319217681884765625)
        gamma = _attr(self, "gamma", 1.05070102214813232421875)
        return (gamma * np.where(x > 0, x, alpha * _expm1_below_zero(x)),)


@register("Celu")
class Celu(Kernel):
    """max(0, x) + min(0, alpha (exp(x / alpha) - 1))."""

    def __call__(self, x):
        alpha = _attr(self, "alpha", 1.0)
        return (np.where(x > 0, x, alpha * _expm1_below_zero(x / alpha)),)


@register("PRelu")
class PRelu(Kernel):
    """The slope broadcasts to the input's shape, never the other way (unidirectional). A constant slope
    in (0, 1] everywhere makes it max(x, slope x), as LeakyRelu: two numpy passes where np.where took
    three and its mask (a TCN's [3, 16, 50] with 16 slopes: 6.9 -> 2.5 us); a slope of 0 would make
    +Inf's product NaN."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        slope = ctx.const(node.inputs[1]) if len(node.inputs) > 1 and ctx.is_const(node.inputs[1]) else None
        self.fractional = (slope is not None and slope.dtype.kind == "f" and slope.size > 0
                           and bool(np.all(slope > 0) and np.all(slope <= 1)))
        self._checked: tuple | None = None  # the (input, slope) shapes last found to broadcast

    def __call__(self, x, slope):
        if self._checked != (x.shape, slope.shape):
            if np.broadcast_shapes(x.shape, slope.shape) != x.shape:
                raise ValueError(f"slope of shape {list(slope.shape)} does not broadcast to the input's "
                                 f"shape {list(x.shape)}")
            self._checked = (x.shape, slope.shape)
        if self.fractional and x.dtype.kind == "f":
            y = x * slope
            return (np.maximum(x, y, out=y),)
        return (np.where(x < 0, x * slope, x),)


@register("ThresholdedRelu")
class ThresholdedRelu(Kernel):
    quiet = True

    def __call__(self, x):
        return (np.where(x > _attr(self, "alpha", 1.0), x, 0),)  # 0 takes x's type (NEP 50)


def softplus(x: np.ndarray) -> np.ndarray:
    """log(exp(x) + 1) as max(x, 0) + log1p(exp(-|x|)): no overflow for large x, and much faster
    than np.logaddexp(x, 0) (a 128 x 768 Softplus: 8.7 -> 0.4 ms)."""
    y = np.abs(x)
    np.negative(y, out=y)
    np.exp(y, out=y)
    np.log1p(y, out=y)
    y += np.maximum(x, 0)
    return y


@register("Softplus")
class Softplus(Kernel):
    def __call__(self, x):
        return (softplus(x),)


@register("Softsign")
class Softsign(Kernel):
    def __call__(self, x):
        return (x / (np.abs(x) + 1),)


@register("HardSigmoid")
class HardSigmoid(Kernel):
    """max(0, min(1, alpha x + beta))."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.act = ("hardsigmoid", _attr(self, "alpha", 0.2), _attr(self, "beta", 0.5))

    def __call__(self, x):
        if compiled(x):
            return (activate(x, self.act, self.threads),)
        y = x * self.act[1]
        y += self.act[2]
        return (np.clip(y, 0, 1, out=y),)


@register("HardSwish")
class HardSwish(Kernel):
    """x * HardSigmoid(x) with alpha = 1/6 (a float32 attribute in ONNX's definition), beta = 0.5."""

    act = ("hardswish", 0.0, 0.0)

    def __call__(self, x):
        if compiled(x):
            return (activate(x, self.act, self.threads),)
        y = x * float(np.float32(1 / 6))
        y += 0.5
        np.clip(y, 0, 1, out=y)
        return (np.multiply(y, x, out=y),)


@register("Gelu")
class Gelu(Kernel):
    """approximate="none": x/2 (1 + erf(x / sqrt 2)). float32 takes the fast rational erf (special.py;
    its absolute error stays under 1e-6 where 1 + erf cancels for negative x); other types compute
    x Phi(x) with Phi the normal distribution function (scipy.special.ndtr), which has no such
    cancellation. "tanh": x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.tanh = self.attrs.get("approximate", "none") == "tanh"
        if self.attrs.get("approximate", "none") not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {self.attrs['approximate']!r}")
        self.act = ("gelu_tanh" if self.tanh else "gelu", 0.0, 0.0)

    def __call__(self, x):
        if compiled(x):
            return (activate(x, self.act, self.threads),)
        if not self.tanh and x.dtype == np.float32:
            y = erf32(x * np.float32(math.sqrt(0.5)))  # x/2 (1 + erf(x / sqrt 2)), 5x faster than ndtr
            y += 1
            y *= x
            y *= 0.5
            return (y,)
        if not self.tanh:
            y = scipy.special.ndtr(x)
            return (np.multiply(y, x, out=y) if y.dtype == x.dtype else (y * x).astype(x.dtype),)
        y = x * x  # x + 0.044715 x^3 as x (1 + 0.044715 x^2): x ** 3 is 250x slower in numpy
        y *= 0.044715
        y += 1
        y *= x
        y *= math.sqrt(2 / math.pi)
        np.tanh(y, out=y)
        y += 1
        y *= x
        y *= 0.5
        return (y,)


@register("Swish")
class Swish(Kernel):
    """x sigmoid(alpha x) (opset 24; alpha = 1 is SiLU)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.act = ("silu", _attr(self, "alpha", 1.0), 0.0)

    def __call__(self, x):
        if compiled(x):
            return (activate(x, self.act, self.threads),)
        y = np.multiply(x, -self.act[1])
        np.exp(y, out=y)  # overflows to inf for very negative x: x / inf is the right -0
        y += 1
        return (np.divide(x, y, out=y),)


@register("Mish")
class Mish(Kernel):
    """x tanh(softplus(x))."""

    def __call__(self, x):
        y = np.tanh(softplus(x))
        return (np.multiply(y, x, out=y),)
