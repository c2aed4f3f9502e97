"""Arithmetic with numpy broadcasting (ONNX uses the same rules from opset 7): Add, Sub, Mul, Div,
Pow, Mod, the variadic Max / Min / Sum / Mean, and Where.

ONNX gives both operands one type (Pow's exponent excepted), and the result keeps it; integer
arithmetic wraps as in C. Integer division and modulo by zero are an error here rather than
numpy's silent 0 (onnxruntime's behaviour there is undefined).
"""
from __future__ import annotations

import math
from functools import reduce

import numpy as np

from dcm.format import constants as C
from dcm.runtime.cpu.registry import register
from dcm.runtime.cpu.shape import check_elements
from dcm.runtime.kernel import Kernel


def check_broadcast(*xs: np.ndarray) -> None:
    """Refuse, before allocating, a broadcast result over spec rule 8's per-tensor limit (two
    vectors of 10^5 values broadcast to 10^10). The product of the sizes bounds the result, so
    the exact shape is worked out only when that product is over the limit."""
    if math.prod(x.size for x in xs) > C.MAX_ELEMENTS:
        check_elements(np.broadcast_shapes(*(x.shape for x in xs)), "broadcast result")


def _no_integer_zero(b: np.ndarray, what: str) -> None:
    if b.dtype.kind in "iu" and not np.all(b):
        raise ZeroDivisionError(f"integer {what} by zero")


class _Binary(Kernel):
    fn = staticmethod(np.add)

    def __call__(self, a, b):
        if a.shape != b.shape and a.size * b.size > C.MAX_ELEMENTS:  # check_broadcast's test, inline
            check_broadcast(a, b)
        out = self.fn(a, b)
        # One dtype in, the same out (the usual case; ``is``: dtypes of one type are one object): no cast
        # to work out, 0.5 us of a [16, 64] Add's 2.4
        if out.dtype is a.dtype is b.dtype:
            return (out,)
        return (out.astype(np.result_type(a, b), copy=False),)


@register("Add")
class Add(_Binary):
    fn = staticmethod(np.add)


@register("Sub")
class Sub(_Binary):
    fn = staticmethod(np.subtract)


@register("Mul")
class Mul(_Binary):
    fn = staticmethod(np.multiply)


@register("Div")
class Div(_Binary):
    @staticmethod
    def fn(a, b):
        if a.dtype.kind in "iu":
            _no_integer_zero(b, "division")
            # Truncation toward zero (C's rule); a - fmod(a, b) is an exact multiple of b, so the
            # floor division is exact. Through float64 instead, int64 values past 2^53 would round.
            return np.floor_divide(np.subtract(a, np.fmod(a, b)), b)
        return np.true_divide(a, b)


# Exponents networks use (x^2 in hand-written normalizations, x^3 in tanh Gelu, x^0.5) without
# np.power's slow path for 3 and 0.5 (3: 250 ns a value, x * x * x: 3 ns). np.sqrt is np.power's
# x^0.5 to the bit in float32 and float64, -0 and -inf included (float16's np.power follows C's pow
# instead: +inf for (-inf) ** 0.5); x * x * x differs from np.power by at most one rounding.
_POWERS = {2.0: np.square, 3.0: lambda x: x * x * x, 0.5: np.sqrt}
_FAST_POWER_TYPES = (np.dtype(np.float32), np.dtype(np.float64))


@register("Pow")
class Pow(Kernel):
    """The result has the base's type, whatever the exponent's (ONNX's T and T1)."""

    def __call__(self, a, b):
        check_broadcast(a, b)
        if a.dtype in _FAST_POWER_TYPES and b.size == 1 and b.ndim <= a.ndim:
            power = _POWERS.get(float(b.reshape(())))
            if power is not None:
                return (power(a),)
        if a.dtype.kind == "f":
            y = np.power(a, b if b.dtype.kind == "f" else b.astype(a.dtype))
        elif b.dtype.kind == "f" or (b.dtype.kind == "i" and np.any(b < 0)):
            y = np.power(a.astype(np.float64), b)  # numpy refuses integers to negative integer powers
        else:
            y = np.power(a, b)
        return (y.astype(a.dtype, copy=False),)


@register("Mod")
class Mod(Kernel):
    """fmod=0: the remainder takes the divisor's sign (Python's %); fmod=1: the dividend's (C's fmod)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.fn = np.fmod if self.attrs.get("fmod", 0) else np.mod

    def __call__(self, a, b):
        check_broadcast(a, b)
        _no_integer_zero(b, "modulo")
        return (self.fn(a, b),)


class _Variadic(Kernel):
    """One or more inputs, broadcast together."""

    fn = staticmethod(np.maximum)

    def __call__(self, first, *rest):
        check_broadcast(first, *rest)
        return (reduce(self.fn, rest, first),)


@register("Max")
class Max(_Variadic):
    quiet = True  # np.maximum propagates NaN without a warning
    fn = staticmethod(np.maximum)


@register("Min")
class Min(_Variadic):
    quiet = True
    fn = staticmethod(np.minimum)


@register("Sum")
class Sum(_Variadic):
    fn = staticmethod(np.add)


@register("Mean")
class Mean(_Variadic):
    def __call__(self, first, *rest):
        if not rest:
            return (first,)
        check_broadcast(first, *rest)
        total = reduce(np.add, rest, first)  # a new array: divided in place
        return (np.divide(total, len(rest) + 1, out=total),)


@register("Where")
class Where(Kernel):
    quiet = True

    def __call__(self, condition, x, y):
        check_broadcast(condition, x, y)
        return (np.where(condition, x, y),)
