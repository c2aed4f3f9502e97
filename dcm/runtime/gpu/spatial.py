"""Conv and pooling on torch. Sparse conv = unfold (im2col) then CSR weight @ columns; dense conv and
max pooling use cuDNN. Padding (explicit, asymmetric, auto_pad, ceil_mode) is resolved exactly as on
the CPU and applied with F.pad, so both backends agree on every attribute combination."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dcm.runtime.cpu import conv as cpu_conv
from dcm.runtime.cpu import pool as cpu_pool
from dcm.encoder.codec import check_decoded_size
from dcm.runtime.cpu.shape import check_elements
from dcm.runtime.cpu.windows import axis_ints, output_size, resolve_pads
from dcm.runtime.gpu.fallback import Native, on_host
from dcm.runtime.gpu.linear import to_torch
from dcm.runtime.gpu.registry import register


def _lift(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    return (x.unsqueeze(2), True) if x.dim() == 3 else (x, False)


def _window_rank(node) -> int:
    return len(node.attrs.get("kernel_shape", []))


def _pad(x: torch.Tensor, begin: list[int], end: list[int], fill: float = 0.0) -> torch.Tensor:
    """Pad the spatial axes (F.pad takes the last axis first)."""
    if any(begin) or any(end):
        return F.pad(x, [p for b, e in zip(reversed(begin), reversed(end)) for p in (b, e)], value=fill)
    return x


def _out_size(size: int, k: int, s: int, d: int) -> int:
    return (size - ((k - 1) * d + 1)) // s + 1


@register("Conv")
class Conv(cpu_conv.Conv):
    """1-D and 2-D windows with a constant weight, sparse or dense; 3-D windows and weights fed at
    run time are a ``GeneralConv``."""

    def __new__(cls, node, ctx):
        w = node.inputs[1] if len(node.inputs) > 1 else ""
        if cls is Conv and not (ctx.is_const(w) and len(ctx.model.tensors[w].shape) <= 4):
            kernel = object.__new__(GeneralConv)
            kernel.__init__(node, ctx)  # not a Conv instance: Python would skip it
            return kernel
        return object.__new__(cls)
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
        given = x.dtype  # the weight is float32: float16 and float64 inputs are computed in it
        x, was_1d = _lift(x.float())
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
                outs.append(mm.left(cols).reshape(mm.shape[0], n, oh, ow))  # (-1 is ambiguous at batch 0)
            y = torch.cat(outs).permute(1, 0, 2, 3).contiguous()
            if self.bias is not None:
                y = y + self.bias.reshape(1, -1, 1, 1)
        return ((y[:, :, 0, :] if was_1d else y).to(given),)


class GeneralConv(cpu_conv.Conv):
    """Any number of spatial axes, the weight constant (decoded dense once: torch has no sparse 3-D
    convolution) or fed at run time: one F.conv1d/2d/3d call, in float32 as the CPU kernel computes."""

    fuses_relu = False

    def _load_general(self, ctx, node, name, shape) -> None:
        self.mode, w, self.density = ctx.weight(node, name)
        if self.mode == "sparse":
            check_decoded_size(ctx.model.tensors[name], 4 * ctx.model.tensors[name].numel, "dense")
            w = w.to_scipy().toarray()
        self.mode, self.weight_shape = "dense", tuple(shape)
        w = np.asarray(w, dtype=np.float32).reshape(shape)
        self.weight = torch.tensor(w, device=ctx.device)  # a copy: w may be read-only

    def __call__(self, x, w=None, b=None):
        w = self.weight if w is None else w.float()
        nd = w.dim() - 2
        if nd < 1 or nd > 3 or x.dim() != nd + 2:
            raise ValueError(f"input of rank {x.dim()} for a weight of rank {w.dim()} (1 to 3 spatial axes)")
        if x.shape[1] != w.shape[1] * self.group or w.shape[0] % self.group:
            raise ValueError(f"input has {x.shape[1]} channels, the weight {list(w.shape)} in {self.group} groups")
        kernel = tuple(w.shape[2:])
        given = self.attrs.get("kernel_shape")
        if given is not None and list(given) != list(kernel):
            raise ValueError(f"kernel_shape {given} does not match the weight {list(w.shape)}")
        strides = tuple(axis_ints(self.attrs, "strides", nd, 1))
        dilations = tuple(axis_ints(self.attrs, "dilations", nd, 1))
        begin, end = resolve_pads(self.attrs, tuple(x.shape[2:]), kernel, strides, dilations)
        out = output_size(tuple(x.shape[2:]), kernel, strides, dilations, begin, end)
        check_elements([x.shape[0], w.shape[0], *out], "Conv output")
        xp = _pad(x.float(), begin, end)
        bias = None if b is None else b.float().reshape(-1)
        y = getattr(F, f"conv{nd}d")(xp, w, bias, strides, 0, dilations, self.group)
        return (y.to(x.dtype),)

    def describe(self) -> dict:
        return {"kernel": "dense", **({"density": self.density} if self.density is not None else {})}


@register("MaxPool")
class MaxPool(Native, cpu_pool.MaxPool):
    """1-D to 3-D windows; the Indices output uses the CPU kernel."""

    cpu_kernel = cpu_pool.MaxPool

    @classmethod
    def native(cls, node, ctx) -> bool:
        return _window_rank(node) <= 3 and not (len(node.outputs) > 1 and node.outputs[1])

    def __call__(self, x):
        x, was_1d = _lift(x)
        begin, end = self._pads(x)
        output_size(tuple(x.shape[2:]), self.kernel, self.strides, self.dilations, begin, end)  # checks the window fits
        if not x.is_floating_point():  # torch max-pools floats only
            return on_host(super().__call__, x.device, x)
        low = float("-inf")
        pool = F.max_pool3d if x.dim() == 5 else F.max_pool2d
        y = pool(_pad(x, begin, end, low), self.kernel, self.strides, 0, self.dilations)
        return (y[:, :, 0, :] if was_1d else y,)


@register("AveragePool")
class AveragePool(Native, cpu_pool.AveragePool):
    """1-D and 2-D windows, and 3-D ones without dilation (F.avg_pool3d has none); dilated 3-D
    windows use the CPU kernel. The divisor per output (pads counted or not) is the CPU kernel's."""

    cpu_kernel = cpu_pool.AveragePool

    @classmethod
    def native(cls, node, ctx) -> bool:
        rank = _window_rank(node)
        return rank <= 2 or (rank == 3 and all(d == 1 for d in node.attrs.get("dilations", [1])))

    def __call__(self, x):
        x, was_1d = _lift(x)
        begin, end = self._pads(x)
        output_size(tuple(x.shape[2:]), self.kernel, self.strides, self.dilations, begin, end)  # checks the window fits
        xp = _pad(x, begin, end)
        n, c = x.shape[:2]
        divisor = torch.as_tensor(self.divisor(tuple(x.shape[2:]), begin, end), device=x.device)
        if x.dim() == 5:
            sums = F.avg_pool3d(xp, self.kernel, self.strides, 0, divisor_override=1)
        else:
            cols = F.unfold(xp.reshape(n * c, 1, *xp.shape[2:]), self.kernel, self.dilations, 0, self.strides)
            sums = cols.sum(1).reshape(n, c, *divisor.shape[2:])
        y = sums / divisor
        return (y[:, :, 0, :] if was_1d else y,)


@register("GlobalAveragePool")
class GlobalAveragePool(cpu_pool.GlobalAveragePool):
    def __call__(self, x):
        return (x.mean(dim=tuple(range(2, x.dim())), keepdim=True),)


@register("GlobalMaxPool")
class GlobalMaxPool(cpu_pool.GlobalMaxPool):
    def __call__(self, x):
        return (x.amax(dim=tuple(range(2, x.dim())), keepdim=True),)
