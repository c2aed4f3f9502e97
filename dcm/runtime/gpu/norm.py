"""LayerNormalization, RMSNormalization, GroupNormalization, InstanceNormalization, LpNormalization and
MeanVarianceNormalization on torch: statistics in the CPU
kernels' precision (``stash_type``, float32 by default; float16 inputs in float32), the result in
the input's type. Attributes are parsed by the CPU kernels (subclassed)."""
from __future__ import annotations

import numpy as np
import torch
from numpy.lib.array_utils import normalize_axis_index, normalize_axis_tuple

from dcm.runtime.cpu import norm as cpu
from dcm.runtime.gpu.registry import register

_TORCH = {np.float32: torch.float32, np.float64: torch.float64}


def _standardize(rows: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row of a [rows, n] tensor standardized (biased variance, as ONNX): (y, mean, 1/std)."""
    mean = rows.mean(1, keepdim=True)
    d = rows - mean
    inv = torch.rsqrt(d.square().mean(1, keepdim=True) + eps)
    return d * inv, mean, inv


@register("LayerNormalization")
class LayerNormalization(cpu.LayerNormalization):
    def __call__(self, x, scale, bias=None):
        axis = self.axis % x.dim() if -x.dim() <= self.axis < x.dim() else None
        if axis is None:
            raise ValueError(f"axis {self.axis} is out of range for an input of rank {x.dim()}")
        lead = x.shape[:axis]
        y, mean, inv = _standardize(x.to(_TORCH[self.stash]).reshape(int(np.prod(lead)), -1), self.eps)
        y = y.reshape(x.shape).to(x.dtype) * scale
        if bias is not None:
            y = y + bias
        stats = (*lead, *(1,) * (x.dim() - axis))
        return y, mean.reshape(stats), inv.reshape(stats)


@register("RMSNormalization")
class RMSNormalization(cpu.RMSNormalization):
    def __call__(self, x, scale):
        axis = self.axis % x.dim() if -x.dim() <= self.axis < x.dim() else None
        if axis is None:
            raise ValueError(f"axis {self.axis} is out of range for an input of rank {x.dim()}")
        rows = x.to(_TORCH[self.stash]).reshape(int(np.prod(x.shape[:axis])), -1)
        y = rows * torch.rsqrt(rows.square().mean(1, keepdim=True) + self.eps)
        return (y.reshape(x.shape).to(x.dtype) * scale,)


@register("InstanceNormalization")
class InstanceNormalization(cpu.InstanceNormalization):
    def __call__(self, x, scale, bias):
        if x.dim() < 3:
            raise ValueError(f"input must have rank >= 3 (N, C, D1, ...), got shape {list(x.shape)}")
        n, c = x.shape[:2]
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        y, _, _ = _standardize(x.to(work).reshape(n * c, -1), self.eps)
        y = y.reshape(n, c, -1) * scale.to(work).reshape(-1, 1) + bias.to(work).reshape(-1, 1)
        return (y.reshape(x.shape).to(x.dtype),)


@register("GroupNormalization")
class GroupNormalization(cpu.GroupNormalization):
    def __call__(self, x, scale, bias):
        n, c = x.shape[:2] if x.dim() >= 2 else (0, 0)
        if x.dim() < 2 or c % self.groups:
            raise ValueError(f"input of shape {list(x.shape)} cannot be split into {self.groups} channel groups")
        want = c if self.per_channel else self.groups
        if scale.numel() != want or bias.numel() != want:
            what = "channels" if self.per_channel else "groups"
            raise ValueError(f"scale and bias must have {want} values ({what}), got {scale.numel()} and {bias.numel()}")
        y, _, _ = _standardize(x.to(_TORCH[self.stash]).reshape(n * self.groups, -1), self.eps)
        y = y.reshape(n, want, -1).to(x.dtype) * scale.reshape(-1, 1) + bias.reshape(-1, 1)
        return (y.reshape(x.shape),)


@register("LpNormalization")
class LpNormalization(cpu.LpNormalization):
    def __call__(self, x):
        axis = normalize_axis_index(self.axis, x.dim())
        norm = x.abs().sum(axis, keepdim=True) if self.p == 1 else x.square().sum(axis, keepdim=True).sqrt()
        return (torch.where(norm == 0, torch.zeros((), dtype=x.dtype, device=x.device), x / norm).to(x.dtype),)


@register("MeanVarianceNormalization")
class MeanVarianceNormalization(cpu.MeanVarianceNormalization):
    def __call__(self, x):
        axes = normalize_axis_tuple(self.axes, x.dim())
        d = x - x.mean(axes, keepdim=True)
        return (d / (d.square().mean(axes, keepdim=True).sqrt() + 1e-9),)
