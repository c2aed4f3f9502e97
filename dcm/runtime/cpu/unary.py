"""One-input math: Abs, Neg, Exp, Log, Sqrt, Reciprocal, Erf, Floor, Ceil, Round, Sign, Det, and the
trigonometric and hyperbolic functions (rotary position embeddings compute Sin and Cos at run time).

Each keeps its input's dtype, as ONNX types them (numpy would return float32 for some float16
routines and float64 from scipy for integer inputs).
"""
from __future__ import annotations

import numpy as np
import scipy.special

from dcm.runtime.cpu.registry import register
from dcm.runtime.cpu.special import erf32
from dcm.runtime.kernel import Kernel


class _Unary(Kernel):
    fn = staticmethod(np.abs)

    def __call__(self, x):
        y = self.fn(x)
        return (y if y.dtype == x.dtype else y.astype(x.dtype),)


@register("Abs")
class Abs(_Unary):
    quiet = True
    fn = staticmethod(np.abs)


@register("Neg")
class Neg(_Unary):
    quiet = True  # integer negation wraps (-128 stays -128 in int8) without a warning, as in C
    fn = staticmethod(np.negative)


@register("Floor")
class Floor(_Unary):
    quiet = True
    fn = staticmethod(np.floor)


@register("Ceil")
class Ceil(_Unary):
    quiet = True
    fn = staticmethod(np.ceil)


@register("Round")
class Round(_Unary):
    """Halves to even (ONNX's rule, and numpy's)."""

    quiet = True
    fn = staticmethod(np.round)


@register("Sign")
class Sign(_Unary):
    quiet = True
    fn = staticmethod(np.sign)


@register("Exp")
class Exp(_Unary):
    fn = staticmethod(np.exp)


@register("Log")
class Log(_Unary):
    fn = staticmethod(np.log)


@register("Sqrt")
class Sqrt(_Unary):
    fn = staticmethod(np.sqrt)


@register("Reciprocal")
class Reciprocal(_Unary):
    fn = staticmethod(np.reciprocal)


@register("Erf")
class Erf(_Unary):
    @staticmethod
    def fn(x):
        # float32: the fast rational form (special.py); float64 through scipy; float16 and integers
        # (which ONNX allows) through float32.
        if x.dtype == np.float64:
            return scipy.special.erf(x)
        return erf32(x if x.dtype == np.float32 else x.astype(np.float32))


@register("Det")
class Det(_Unary):
    """The determinant of each square matrix in the last two axes (numpy's LU), in the input's type."""

    @staticmethod
    def fn(x):
        if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"input of shape {list(x.shape)} holds no square matrices")
        return np.linalg.det(x)


def _register_numpy(op: str, fn) -> None:
    """A kernel that is exactly numpy's ufunc (these warn on a domain error, so none is quiet)."""
    register(op)(type(op, (_Unary,), {"fn": staticmethod(fn), "__doc__": f"numpy.{fn.__name__}"}))


for _op, _fn in [("Sin", np.sin), ("Cos", np.cos), ("Tan", np.tan), ("Asin", np.arcsin), ("Acos", np.arccos),
                 ("Atan", np.arctan), ("Sinh", np.sinh), ("Cosh", np.cosh), ("Asinh", np.arcsinh),
                 ("Acosh", np.arccosh), ("Atanh", np.arctanh)]:
    _register_numpy(_op, _fn)
