"""Layout ops on torch; attribute and constant-input parsing is shared with the CPU kernels."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dcm.runtime.cpu import shape as cpu
from dcm.runtime.gpu.fallback import Native, on_host
from dcm.runtime.gpu.indexing import in_range, torch_dtype
from dcm.runtime.gpu.registry import register

register("Identity", "Dropout")(cpu.Identity)
register("Reshape")(cpu.Reshape)


@register("Flatten")
class Flatten(cpu.Flatten):
    def __call__(self, x):
        axis = int(self.attrs.get("axis", 1))
        axis = axis + x.dim() if axis < 0 else axis  # ONNX's negative axis counts from the rank, -1: the last axis
        if not 0 <= axis <= x.dim():
            raise ValueError(f"axis {self.attrs.get('axis')} is out of range for an input of rank {x.dim()}")
        return (x.reshape(math.prod(x.shape[:axis]), -1),)


@register("Transpose")
class Transpose(cpu.Transpose):
    def __call__(self, x):
        perm = self.attrs.get("perm") or list(range(x.dim()))[::-1]
        if sorted(perm) != list(range(x.dim())):
            raise ValueError(f"perm {perm} is not a permutation of the input's {x.dim()} axes")
        return (x.permute(*perm).contiguous(),)


@register("Concat")
class Concat(cpu.Concat):
    def __call__(self, *xs):
        return (torch.cat(xs, int(self.attrs["axis"])),)


@register("Squeeze")
class Squeeze(cpu.Squeeze):
    def __call__(self, x, axes=None):
        axes = self.axes if axes is None else cpu.ints(axes)  # a run-time axes input
        if axes is None:
            return (x.reshape([d for d in x.shape if d != 1]),)
        axes = {cpu.normal_axis(a, x.dim()) for a in axes}
        if any(x.shape[a] != 1 for a in axes):
            raise ValueError(f"cannot squeeze axes {sorted(axes)} of shape {list(x.shape)}: size is not 1")
        return (x.reshape([d for i, d in enumerate(x.shape) if i not in axes]),)


@register("Unsqueeze")
class Unsqueeze(cpu.Unsqueeze):
    def __call__(self, x, axes=None):
        axes = self.axes if axes is None else cpu.ints(axes)  # a run-time axes input
        if axes is None:
            raise ValueError("no axes")
        rank = x.dim() + len(axes)
        axes = [cpu.normal_axis(a, rank) for a in axes]
        if len(set(axes)) != len(axes):
            raise ValueError(f"repeated axis in {axes}")
        for a in sorted(axes):
            x = x.unsqueeze(a)
        return (x,)


@register("Pad")
class Pad(Native, cpu.Pad):
    """constant, reflect and edge padding; wrap padding, and reflect or edge padding of more than
    3 axes (F.pad's limit), use the CPU kernel."""

    cpu_kernel = cpu.Pad

    @classmethod
    def native(cls, node, ctx) -> bool:
        return node.attrs.get("mode", "constant") != "wrap"

    def __call__(self, x, pads=None, value=None, axes=None):
        given = (pads, value, axes)
        pads = self.pads if pads is None else cpu.ints(pads)  # run-time pads, fill value and axes inputs
        axes = self.axes if axes is None else cpu.ints(axes)
        fill = self.value if value is None or value.numel() == 0 else value.reshape(-1)[0].item()
        axes = [a % x.dim() for a in axes] if axes else list(range(x.dim()))
        k = len(axes)
        widths = [(0, 0)] * x.dim()
        for j, a in enumerate(axes):
            widths[a] = (pads[j], pads[j + k])
        cpu.check_elements([d + b + e for d, (b, e) in zip(x.shape, widths)], "Pad")
        flat = [w for pair in reversed(widths) for w in pair]  # F.pad wants last axis first
        if self.mode == "constant":
            return (F.pad(x, flat, value=fill),)
        first = next((i for i, w in enumerate(widths) if any(w)), x.dim())
        n = x.dim() - first  # F.pad's reflect/replicate pad at most the last 3 axes of [N, C, ...]
        if n == 0:
            return (x,)
        if n > 3 or not x.is_floating_point():  # (torch reflects and replicates floats only)
            return on_host(super().__call__, x.device, x, *given)
        lead = x.shape[:first]
        y = F.pad(x.reshape(1, -1, *x.shape[first:]), flat[: 2 * n],
                  mode="reflect" if self.mode == "reflect" else "replicate")
        return (y.reshape(*lead, *y.shape[2:]),)


@register("Shape")
class Shape(cpu.Shape):
    def __call__(self, x):
        start, end = int(self.attrs.get("start", 0)), self.attrs.get("end")
        return (torch.tensor(list(x.shape)[start:end], dtype=torch.int64, device=x.device),)


@register("Size")
class Size(cpu.Size):
    """Counted on the device: the CPU fallback would copy the whole tensor to the host to count it."""

    def __call__(self, x):
        return (torch.tensor(x.numel(), dtype=torch.int64, device=x.device),)


@register("Gather")
class Gather(cpu.Gather):
    def __call__(self, x, idx):
        axis = int(self.attrs.get("axis", 0)) % x.dim()
        idx = in_range(idx, x.shape[axis], "Gather")  # negative counts from the end; out of range is an error
        out = x.index_select(axis, idx.reshape(-1))
        return (out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :])),)


@register("Cast")
class Cast(cpu.Cast):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.to = torch_dtype(self.to)

    def __call__(self, x):
        return (x.to(self.to),)
