"""Resize and Upsample on torch, every mode and coordinate transform the CPU kernel takes: the
per-axis source positions and tap weights come from the CPU kernel's own functions (small arrays of
one axis's output positions, computed on the host), the gather and weighted sum of the tensor runs on
the device. F.interpolate is not used: its coordinate rules match only some of ONNX's
(coordinate_transformation_mode x nearest_mode x cubic_coeff_a x exclude_outside)."""
from __future__ import annotations

import math

import numpy as np
import torch

from dcm.runtime.cpu import resize as cpu
from dcm.runtime.cpu.shape import check_elements
from dcm.runtime.gpu.fallback import to_host
from dcm.runtime.gpu.registry import register


@register("Resize", "Upsample")
class Resize(cpu.Resize):
    def __call__(self, x, a=None, b=None, c=None):
        a, b, c = (to_host(v) for v in (a, b, c))  # roi, scales, sizes: a few values
        roi, scales, sizes = (None, a, None) if self.legacy else (a, b, c)
        if self.scales_attr is not None:
            scales = np.asarray(self.scales_attr, dtype=np.float64)
        rank = x.dim()
        axes = list(range(rank)) if self.axes is None else [int(v) + rank if v < 0 else int(v) for v in self.axes]
        if len(set(axes)) != len(axes) or any(not 0 <= v < rank for v in axes):
            raise ValueError(f"axes {self.axes} do not fit an input of rank {rank}")
        scale, out = self._targets(tuple(x.shape), axes, scales, sizes)
        roi = None if roi is None or np.size(roi) == 0 else np.asarray(roi, dtype=np.float64).reshape(-1)
        if roi is not None and roi.size not in (2 * len(axes), 2 * rank):
            raise ValueError(f"roi has {roi.size} values for {len(axes)} axes")
        check_elements(out, "Resize output")
        work = x.to(torch.float32 if x.dtype in (torch.float16, torch.float32) else torch.float64)
        for k, axis in enumerate(axes):
            span = None
            if roi is not None:
                i, n = (k, len(axes)) if roi.size == 2 * len(axes) else (axis, rank)
                span = (float(roi[i]), float(roi[i + n]))
            trivial = span is None or self.transform != "tf_crop_and_resize" or span == (0.0, 1.0)
            if math.isclose(scale[axis], 1.0) and out[axis] == work.shape[axis] and trivial:
                continue
            work = self._torch_axis(work, axis, scale[axis], out[axis], span)
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
        x, outside = cpu.source_coordinates(self.transform, out, scale, size, roi)
        view = [1] * data.dim()
        view[axis] = out
        dev = data.device
        if self.mode == "nearest":
            idx = np.clip(cpu.nearest_index(x, self.rounding), 0, size - 1)
            result = data.index_select(axis, torch.as_tensor(idx, device=dev))
        else:
            low = np.floor(x)
            w = cpu.coefficients(self.mode, np.where(x == low, 1.0, x - low), scale, self.cubic_a, self.antialias)
            taps = w.shape[1]
            check_elements([out, taps], "Resize coefficients")
            idx = cpu._neighbours(x, taps)
            if self.exclude_outside:
                w = np.where((idx < 0) | (idx >= size), 0.0, w)
                total = w.sum(axis=1, keepdims=True)
                w = w / np.where(total == 0, 1.0, total)
            idx = torch.as_tensor(np.clip(idx, 0, size - 1), device=dev)
            w = torch.as_tensor(w, dtype=data.dtype, device=dev)
            result = data.index_select(axis, idx[:, 0]) * w[:, 0].reshape(view)
            for k in range(1, taps):
                result = result + data.index_select(axis, idx[:, k]) * w[:, k].reshape(view)
        if outside is not None and outside.any():
            mask = torch.as_tensor(outside, device=dev).reshape(view)
            result = torch.where(mask, torch.full((), self.extrapolation, dtype=data.dtype, device=dev), result)
        return result
