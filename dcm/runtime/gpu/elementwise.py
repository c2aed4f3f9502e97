"""Elementwise math, comparisons, logic and Where on torch, with ONNX's dtype rules: a result keeps
its input's type (torch would promote an integer Exp to float, an int32 sum to int64), comparisons
and logic give bool, integer Div truncates, Mod follows ``fmod`` (0: the divisor's sign, 1: the
dividend's). Integer division or modulo by zero is an error, as on the CPU backend."""
from __future__ import annotations

import math
from functools import reduce

import torch

from dcm.format import constants as C
from dcm.runtime.cpu import elementwise as cpu
from dcm.runtime.cpu import logic as cpu_logic
from dcm.runtime.cpu.shape import check_elements
from dcm.runtime.gpu.registry import register
from dcm.runtime.kernel import Kernel


def check_broadcast(*xs: torch.Tensor) -> None:
    """Refuse, before allocating, a broadcast result over spec rule 8's per-tensor limit."""
    if math.prod(x.numel() for x in xs) > C.MAX_ELEMENTS:
        check_elements(torch.broadcast_shapes(*(x.shape for x in xs)), "broadcast result")


def _no_integer_zero(b: torch.Tensor, what: str) -> None:
    if not b.is_floating_point() and b.dtype != torch.bool and not bool(b.all()):
        raise ZeroDivisionError(f"integer {what} by zero")


class _Unary(Kernel):
    fn = staticmethod(torch.abs)

    def __call__(self, x):
        y = self.fn(x)
        return (y if y.dtype == x.dtype else y.to(x.dtype),)


_UNARY = {"Abs": torch.abs, "Neg": torch.neg, "Floor": torch.floor, "Ceil": torch.ceil,
          "Round": torch.round,  # halves to even, as ONNX
          "Sign": torch.sign, "Exp": torch.exp, "Log": torch.log, "Sqrt": torch.sqrt, "Reciprocal": torch.reciprocal,
          "Erf": torch.erf, "Sin": torch.sin, "Cos": torch.cos, "Tan": torch.tan, "Asin": torch.asin,
          "Acos": torch.acos, "Atan": torch.atan, "Sinh": torch.sinh, "Cosh": torch.cosh, "Asinh": torch.asinh,
          "Acosh": torch.acosh, "Atanh": torch.atanh}
for _op, _fn in _UNARY.items():
    register(_op)(type(_op, (_Unary,), {"fn": staticmethod(_fn), "__doc__": f"torch.{_fn.__name__}"}))


class _Binary(Kernel):
    fn = staticmethod(torch.add)

    def __call__(self, a, b):
        if a.shape != b.shape:
            check_broadcast(a, b)
        return (self.fn(a, b),)


_BINARY = {  # arithmetic, comparisons (bool results), logic and bitwise ops of two inputs
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Equal": torch.eq, "Less": torch.lt,
    "LessOrEqual": torch.le, "Greater": torch.gt, "GreaterOrEqual": torch.ge, "And": torch.logical_and,
    "Or": torch.logical_or, "Xor": torch.logical_xor, "BitwiseAnd": torch.bitwise_and,
    "BitwiseOr": torch.bitwise_or, "BitwiseXor": torch.bitwise_xor}
for _op, _fn in _BINARY.items():
    register(_op)(type(_op, (_Binary,), {"fn": staticmethod(_fn), "__doc__": f"torch.{_fn.__name__}"}))


@register("Div")
class Div(Kernel):
    def __call__(self, a, b):
        check_broadcast(a, b)
        if not a.is_floating_point():
            _no_integer_zero(b, "division")
            return (torch.div(a, b, rounding_mode="trunc"),)
        return (a / b,)


@register("Pow")
class Pow(Kernel):
    """The result has the base's type, whatever the exponent's (ONNX's T and T1)."""

    def __call__(self, a, b):
        check_broadcast(a, b)
        if a.is_floating_point():
            y = torch.pow(a, b.to(a.dtype))
            if a.dtype == torch.float16:  # numpy's float16 power follows C's pow, as torch does
                return (y,)
            # numpy's float32/float64 power (the CPU kernel's) gives NaN for (-inf) ** 0.5, C's pow +inf
            return (torch.where((b == 0.5) & (a == float("-inf")), torch.full_like(y, float("nan")), y),)
        if b.is_floating_point() or bool((b < 0).any()):  # torch refuses integers to negative integer powers
            return (torch.pow(a.double(), b.double()).to(a.dtype),)
        return (torch.pow(a, b.to(a.dtype)),)


@register("Mod")
class Mod(cpu.Mod):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.fn = torch.fmod if self.attrs.get("fmod", 0) else torch.remainder

    def __call__(self, a, b):
        check_broadcast(a, b)
        _no_integer_zero(b, "modulo")
        return (self.fn(a, b),)


class _Variadic(Kernel):
    fn = staticmethod(torch.maximum)

    def __call__(self, first, *rest):
        check_broadcast(first, *rest)
        y = reduce(self.fn, rest, first)
        return (y if rest else y.clone(),)


@register("Max")
class Max(_Variadic):
    fn = staticmethod(torch.maximum)  # NaN propagates, as np.maximum


@register("Min")
class Min(_Variadic):
    fn = staticmethod(torch.minimum)


@register("Sum")
class Sum(_Variadic):
    fn = staticmethod(torch.add)


@register("Mean")
class Mean(Kernel):
    def __call__(self, first, *rest):
        check_broadcast(first, *rest)
        return (reduce(torch.add, rest, first) / (len(rest) + 1),)


@register("Where")
class Where(Kernel):
    def __call__(self, condition, x, y):
        check_broadcast(condition, x, y)
        return (torch.where(condition, x, y),)


@register("Not")
class Not(Kernel):
    def __call__(self, x):
        return (torch.logical_not(x),)


@register("BitwiseNot")
class BitwiseNot(Kernel):
    def __call__(self, x):
        return (torch.bitwise_not(x),)


@register("IsNaN")
class IsNaN(Kernel):
    def __call__(self, x):
        return (torch.isnan(x),)


@register("IsInf")
class IsInf(cpu_logic.IsInf):
    def __call__(self, x):
        if self.positive and self.negative:
            return (torch.isinf(x),)
        if self.positive:
            return (torch.isposinf(x),)
        if self.negative:
            return (torch.isneginf(x),)
        return (torch.zeros(x.shape, dtype=torch.bool, device=x.device),)
