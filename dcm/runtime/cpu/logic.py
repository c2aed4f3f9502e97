"""Comparisons, boolean logic and float classification, whose results are bool tensors, and the
bitwise ops on integers.

None of these can raise a numpy floating-point warning (a comparison with NaN is quietly False),
so all are ``quiet``.
"""
from __future__ import annotations

import numpy as np

from dcm.runtime.cpu.elementwise import check_broadcast
from dcm.runtime.cpu.registry import register
from dcm.runtime.kernel import Kernel


class _Compare(Kernel):
    """Two inputs broadcast together through one numpy ufunc."""

    quiet = True
    fn = staticmethod(np.equal)

    def __call__(self, a, b):
        check_broadcast(a, b)
        return (self.fn(a, b),)


@register("Equal")
class Equal(_Compare):
    fn = staticmethod(np.equal)


@register("Less")
class Less(_Compare):
    fn = staticmethod(np.less)


@register("LessOrEqual")
class LessOrEqual(_Compare):
    fn = staticmethod(np.less_equal)


@register("Greater")
class Greater(_Compare):
    fn = staticmethod(np.greater)


@register("GreaterOrEqual")
class GreaterOrEqual(_Compare):
    fn = staticmethod(np.greater_equal)


@register("And")
class And(_Compare):
    fn = staticmethod(np.logical_and)


@register("Or")
class Or(_Compare):
    fn = staticmethod(np.logical_or)


@register("Xor")
class Xor(_Compare):
    fn = staticmethod(np.logical_xor)


@register("BitwiseAnd")
class BitwiseAnd(_Compare):
    fn = staticmethod(np.bitwise_and)


@register("BitwiseOr")
class BitwiseOr(_Compare):
    fn = staticmethod(np.bitwise_or)


@register("BitwiseXor")
class BitwiseXor(_Compare):
    fn = staticmethod(np.bitwise_xor)


@register("BitwiseNot")
class BitwiseNot(Kernel):
    quiet = True

    def __call__(self, x):
        return (np.invert(x),)


@register("BitShift")
class BitShift(Kernel):
    """x shifted by y bits, ``direction`` LEFT or RIGHT. A signed right shift copies the sign bit; a
    signed left shift is done on the unsigned bits (C leaves it undefined). A shift that is negative
    or at least the type's width gives what the sign extension alone gives: -1 for a negative x
    shifted right, else 0 (opset 28's rule; older opsets define unsigned types only)."""

    quiet = True

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.left = self.attrs.get("direction") == "LEFT"
        if self.attrs.get("direction") not in ("LEFT", "RIGHT"):
            raise ValueError(f"direction must be 'LEFT' or 'RIGHT', got {self.attrs.get('direction')!r}")

    def __call__(self, x, y):
        check_broadcast(x, y)
        inside = (y >= 0) & (y < 8 * x.dtype.itemsize)
        amount = np.where(inside, y, 0).astype(x.dtype)
        if self.left:
            unsigned = np.dtype(f"u{x.dtype.itemsize}")
            shifted = np.left_shift(x.view(unsigned), amount.view(unsigned)).view(x.dtype)
            return (np.where(inside, shifted, 0).astype(x.dtype, copy=False),)
        shifted = np.right_shift(x, amount)
        outside = np.where(x < 0, -1, 0) if x.dtype.kind == "i" else 0
        return (np.where(inside, shifted, outside).astype(x.dtype, copy=False),)


@register("Not")
class Not(Kernel):
    quiet = True

    def __call__(self, x):
        return (np.logical_not(x),)


@register("IsNaN")
class IsNaN(Kernel):
    quiet = True

    def __call__(self, x):
        return (np.isnan(x),)


@register("IsInf")
class IsInf(Kernel):
    """``detect_positive`` / ``detect_negative`` (both on by default) pick which infinities count."""

    quiet = True

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.positive = bool(self.attrs.get("detect_positive", 1))
        self.negative = bool(self.attrs.get("detect_negative", 1))

    def __call__(self, x):
        if self.positive and self.negative:
            return (np.isinf(x),)
        if self.positive:
            return (np.isposinf(x),)
        if self.negative:
            return (np.isneginf(x),)
        return (np.zeros(x.shape, dtype=bool),)
