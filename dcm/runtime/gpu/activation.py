"""The activations of transformers and modern CNNs on torch (Gelu, HardSwish, Mish, Elu...), in the
CPU kernels' exact formulas: attributes are read as float32 as ONNX stores them (``cpu._attr``)."""
from __future__ import annotations

import math

import numpy as np
import torch

from dcm.runtime.cpu import activation as cpu
from dcm.runtime.gpu.registry import register
from dcm.runtime.kernel import Kernel

_attr = cpu._attr


def _expm1_below_zero(x: torch.Tensor) -> torch.Tensor:
    """exp(x) - 1 where x < 0, 0 elsewhere: the exponential never sees a large x."""
    return torch.expm1(torch.clamp_max(x, 0))


def softplus(x: torch.Tensor) -> torch.Tensor:
    """max(x, 0) + log1p(exp(-|x|)): exact for every x (F.softplus returns x itself past a threshold)."""
    return torch.clamp_min(x, 0) + torch.log1p(torch.exp(-x.abs()))


@register("Elu")
class Elu(Kernel):
    def __call__(self, x):
        return (torch.where(x > 0, x, _attr(self, "alpha", 1.0) * _expm1_below_zero(x)),)


@register("Selu")
class Selu(Kernel):
    def __call__(self, x):
        alpha = _attr(self, "alpha", 1.67326319217681884765625)
        gamma = _attr(self, "gamma", 1.05070102214813232421875)
        return (gamma * torch.where(x > 0, x, alpha * _expm1_below_zero(x)),)


@register("Celu")
class Celu(Kernel):
    def __call__(self, x):
        alpha = _attr(self, "alpha", 1.0)
        return (torch.where(x > 0, x, alpha * _expm1_below_zero(x / alpha)),)


@register("PRelu")
class PRelu(Kernel):
    """The slope broadcasts to the input's shape, never the other way (unidirectional)."""

    def __call__(self, x, slope):
        if torch.broadcast_shapes(x.shape, slope.shape) != x.shape:
            raise ValueError(f"slope of shape {list(slope.shape)} does not broadcast to the input's "
                             f"shape {list(x.shape)}")
        return (torch.where(x < 0, x * slope, x),)


@register("ThresholdedRelu")
class ThresholdedRelu(Kernel):
    def __call__(self, x):
        return (torch.where(x > _attr(self, "alpha", 1.0), x, torch.zeros((), dtype=x.dtype, device=x.device)),)


@register("Softplus")
class Softplus(Kernel):
    def __call__(self, x):
        return (softplus(x),)


@register("Softsign")
class Softsign(Kernel):
    def __call__(self, x):
        return (x / (x.abs() + 1),)


@register("HardSigmoid")
class HardSigmoid(Kernel):
    def __call__(self, x):
        return (torch.clamp(x * _attr(self, "alpha", 0.2) + _attr(self, "beta", 0.5), 0, 1),)


@register("HardSwish")
class HardSwish(Kernel):
    """x * HardSigmoid(x) with alpha = 1/6 as float32 (ONNX's definition), beta = 0.5."""

    def __call__(self, x):
        return (x * torch.clamp(x * float(np.float32(1 / 6)) + 0.5, 0, 1),)


@register("Gelu")
class Gelu(cpu.Gelu):
    """x/2 (1 + erf(x / sqrt 2)), or x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): the formulas
    written out (F.gelu gives NaN for x = +inf)."""

    def __call__(self, x):
        if self.tanh:
            inner = x * (1 + 0.044715 * x * x) * math.sqrt(2 / math.pi)
            return (0.5 * x * (1 + torch.tanh(inner)),)
        return (0.5 * x * (1 + torch.erf(x * math.sqrt(0.5))),)


@register("Swish")
class Swish(Kernel):
    def __call__(self, x):
        return (x * torch.sigmoid(x * _attr(self, "alpha", 1.0)),)


@register("Mish")
class Mish(Kernel):
    def __call__(self, x):
        return (x * torch.tanh(softplus(x)),)



@register("Shrink")
class Shrink(Kernel):
    """x - bias above lambd, x + bias below -lambd, 0 between."""

    def __call__(self, x):
        lambd, bias = _attr(self, "lambd", 0.5), _attr(self, "bias", 0.0)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        return (torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, zero)).to(x.dtype),)


@register("Hardmax")
class Hardmax(cpu.Hardmax):
    """1 at the first maximum along the axis (torch.argmax, like numpy's, takes the first)."""

    def __call__(self, x):
        v, axis = self._view(x)
        if v.numel() == 0:
            return (x.clone(),)
        y = torch.zeros_like(v).scatter_(axis, v.argmax(axis, keepdim=True), 1)
        return (y.reshape(x.shape),)
