"""Resize and Upsample on torch, every mode and coordinate transform the CPU kernel takes: the
per-axis source positions and tap weights come from the CPU kernel's own ``_taps`` (small arrays of
one axis's output positions, computed on the host), the gather and weighted sum of the tensor runs on
the device. F.interpolate is not used: its coordinate rules match only some of ONNX's
(coordinate_transformation_mode x nearest_mode x cubic_coeff_a x exclude_outside). GridSample runs
torch's own grid_sample."""
from __future__ import annotations

import torch

from dcm.runtime.cpu import grid_sample as cpu_grid, resize as cpu
from dcm.runtime.cpu.shape import check_elements
from dcm.runtime.gpu.fallback import on_host, to_host
from dcm.runtime.gpu.registry import register


@register("Resize", "Upsample")
class Resize(cpu.Resize):
    def __call__(self, x, a=None, b=None, c=None):
        a, b, c = (to_host(v) for v in (a, b, c))  # roi, scales, sizes: a few values
        work = x.to(torch.float32 if x.dtype in (torch.float16, torch.float32) else torch.float64)
        for axis, scale, out, span in self._plan(tuple(x.shape), a, b, c):
            work = self._torch_axis(work, axis, scale, out, span)
        if not x.is_floating_point():
            info = torch.iinfo(x.dtype)
            return (torch.clamp(torch.round(work), info.min, info.max).to(x.dtype),)
        return (work.to(x.dtype),)

    def _torch_axis(self, data: torch.Tensor, axis: int, scale: float, out: int, roi) -> torch.Tensor:
        """The CPU kernel's ``_axis`` with the gathers and sums in torch."""
        size = data.shape[axis]
        shape = list(data.shape)
        shape[axis] = out
        check_elements(shape, "Resize intermediate")
        if out == 0 or size == 0:
            if out and not size:
                raise ValueError("cannot resize an empty axis to a non-empty one")
            return data.new_zeros(shape)
        idx, w, outside = self._taps(size, out, scale, roi)
        view = [1] * data.dim()
        view[axis] = out
        dev = data.device
        idx = torch.as_tensor(idx, device=dev)
        if self.mode == "nearest":
            result = data.index_select(axis, idx[:, 0])
        else:
            taps = w.shape[1]
            w = torch.as_tensor(w, dtype=data.dtype, device=dev)
            result = data.index_select(axis, idx[:, 0]) * w[:, 0].reshape(view)
            for k in range(1, taps):
                result = result + data.index_select(axis, idx[:, k]) * w[:, k].reshape(view)
        if outside is not None and outside.any():
            mask = torch.as_tensor(outside, device=dev).reshape(view)
            result = torch.where(mask, torch.full((), self.extrapolation, dtype=data.dtype, device=dev), result)
        return result


@register("GridSample")
class GridSample(cpu_grid.GridSample):
    """torch's own ``grid_sample`` (ONNX took its geometry from it); cubic on 3-D inputs, which torch
    has not, on the host."""

    def __call__(self, x, grid):
        if self.mode == "cubic" and x.dim() != 4 or not x.is_floating_point():
            return on_host(super().__call__, x.device, x, grid)
        mode = {"linear": "bilinear", "nearest": "nearest", "cubic": "bicubic"}[self.mode]
        y = torch.nn.functional.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode=self.padding,
                                            align_corners=self.align)
        return (y,)
