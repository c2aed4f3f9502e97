"""Conv and pooling on torch. Sparse conv = unfold (im2col) then CSR weight @ columns; dense conv and
max pooling use cuDNN. Padding (explicit, asymmetric, auto_pad, ceil_mode) is resolved exactly as on
the CPU and applied with F.pad, so both backends agree on every attribute combination."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dcm.runtime.cpu import conv as cpu_conv
from dcm.runtime.cpu import pool as cpu_pool
from dcm.runtime.cpu.windows import resolve_pads
from dcm.runtime.gpu.fallback import Native, on_host
from dcm.runtime.gpu.linear import to_torch
from dcm.runtime.gpu.registry import register


def _lift(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    return (x.unsqueeze(2), True) if x.dim() == 3 else (x, False)


def _window_rank(node) -> int:
    return len(node.attrs.get("kernel_shape", []))


def _pad(x: torch.Tensor, begin: list[int], end: list[int], fill: float = 0.0) -> torch.Tensor:
    if any(begin) or any(end):
        return F.pad(x, (begin[1], end[1], begin[0], end[0]), value=fill)
    return x


def _out_size(size: int, k: int, s: int, d: int) -> int:
    return (size - ((k - 1) * d + 1)) // s + 1


@register("Conv")
class Conv(Native, cpu_conv.Conv):
    """1-D and 2-D windows with a constant weight; 3-D and weights fed at run time use the CPU kernel."""

    cpu_kernel = cpu_conv.Conv

    @classmethod
    def native(cls, node, ctx) -> bool:
        w = node.inputs[1] if len(node.inputs) > 1 else ""
        return ctx.is_const(w) and len(ctx.model.tensors[w].shape) <= 4
    allow_winograd = False  # cuDNN chooses its own algorithm for dense convolutions
    allow_direct = False  # the CPU's compiled direct sparse convolution
    fuses_relu = False  # the CPU kernel's fused Relu is numpy; this one has none

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.mms = [to_torch(mm, ctx.device) for mm in self.mms]
        if self.mode == "dense":  # one cuDNN call for all groups
            w = torch.cat([mm.w for mm in self.mms])
            self.dense_w = w.reshape(w.shape[0], -1, *self.kernel)
        self.bias = None if self.bias is None else torch.as_tensor(self.bias.reshape(-1), device=ctx.device)

    def __call__(self, x, _w=None, _b=None):
        x, was_1d = _lift(x)
        begin, end = resolve_pads(self.pad_attrs, tuple(x.shape[2:]), self.kernel, self.strides, self.dilations)
        x = _pad(x, begin, end)
        if self.mode == "dense":
            y = F.conv2d(x, self.dense_w, self.bias, self.strides, 0, self.dilations, self.group)
        else:
            n, c, h, w = x.shape
            oh, ow = (_out_size(h, self.kernel[0], self.strides[0], self.dilations[0]),
                      _out_size(w, self.kernel[1], self.strides[1], self.dilations[1]))
            cg = c // self.group
            outs = []
            for g, mm in enumerate(self.mms):
                cols = F.unfold(x[:, g * cg : (g + 1) * cg], self.kernel, self.dilations, 0, self.strides)
                cols = cols.permute(1, 0, 2).reshape(cols.shape[1], n * oh * ow)  # [Cg*kh*kw, N*OH*OW]
                outs.append(mm.left(cols).reshape(-1, n, oh, ow))
            y = torch.cat(outs).permute(1, 0, 2, 3).contiguous()
            if self.bias is not None:
                y = y + self.bias.reshape(1, -1, 1, 1)
        return (y[:, :, 0, :] if was_1d else y,)


@register("MaxPool")
class MaxPool(Native, cpu_pool.MaxPool):
    """1-D and 2-D windows; 3-D ones and the Indices output use the CPU kernel."""

    cpu_kernel = cpu_pool.MaxPool

    @classmethod
    def native(cls, node, ctx) -> bool:
        return _window_rank(node) <= 2 and not (len(node.outputs) > 1 and node.outputs[1])

    def __call__(self, x):
        x, was_1d = _lift(x)
        begin, end = self._pads(x)
        if not x.is_floating_point():  # torch max-pools floats only
            return on_host(super().__call__, x.device, x)
        low = float("-inf")
        y = F.max_pool2d(_pad(x, begin, end, low), self.kernel, self.strides, 0, self.dilations)
        return (y[:, :, 0, :] if was_1d else y,)


@register("AveragePool")
class AveragePool(Native, cpu_pool.AveragePool):
    """1-D and 2-D windows; 3-D ones use the CPU kernel."""

    cpu_kernel = cpu_pool.AveragePool

    @classmethod
    def native(cls, node, ctx) -> bool:
        return _window_rank(node) <= 2

    def __call__(self, x):
        x, was_1d = _lift(x)
        begin, end = self._pads(x)
        xp = _pad(x, begin, end)
        n, c = x.shape[:2]
        cols = F.unfold(xp.reshape(n * c, 1, *xp.shape[2:]), self.kernel, self.dilations, 0, self.strides)
        divisor = torch.as_tensor(self.divisor(tuple(x.shape[2:]), begin, end), device=x.device)
        y = cols.sum(1).reshape(n, c, *divisor.shape[2:]) / divisor
        return (y[:, :, 0, :] if was_1d else y,)


@register("GlobalAveragePool")
class GlobalAveragePool(cpu_pool.GlobalAveragePool):
    def __call__(self, x):
        return (x.mean(dim=tuple(range(2, x.dim())), keepdim=True),)


@register("GlobalMaxPool")
class GlobalMaxPool(cpu_pool.GlobalMaxPool):
    def __call__(self, x):
        return (x.amax(dim=tuple(range(2, x.dim())), keepdim=True),)
