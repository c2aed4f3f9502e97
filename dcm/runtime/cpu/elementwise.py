"""Binary arithmetic with numpy broadcasting (ONNX uses the same rules from opset 7)."""
from __future__ import annotations

import numpy as np

from dcm.runtime.cpu.registry import register
from dcm.runtime.kernel import Kernel


class _Binary(Kernel):
    fn = staticmethod(np.add)

    def __call__(self, a, b):
        out = self.fn(a, b)
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
        if np.issubdtype(np.result_type(a, b), np.integer):
            return np.trunc(np.true_divide(a, b)).astype(np.result_type(a, b))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.true_divide(a, b)
