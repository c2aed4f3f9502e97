"""ConvTranspose on torch: F.conv_transpose1d/2d/3d with the weight decoded dense once at load (a
pruned weight too: the GPU's dense transposed convolution beats a sparse product followed by col2im's
scattered adds). The output geometry (pads, auto_pad, output_shape, output_padding) is the CPU
kernel's ``_geometry``: torch's full result is cropped, or padded with zeros at the end, to it."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dcm.encoder.codec import CsrParts, check_decoded_size
from dcm.runtime.cpu import conv_transpose as cpu
from dcm.runtime.cpu.shape import check_elements
from dcm.runtime.cpu.windows import axis_ints
from dcm.runtime.gpu.registry import register


@register("ConvTranspose")
class ConvTranspose(cpu.ConvTranspose):
    def __init__(self, node, ctx):
        self.device = ctx.device
        self.record = ctx.model.tensors.get(node.inputs[1])  # None: the weight is fed at run time
        self.weight = None  # set by _matmuls when the weight is a constant
        super().__init__(node, ctx)
        if self.weight is not None:
            self.mode = "dense"

    def _matmuls(self, w: CsrParts | np.ndarray) -> list:
        """Called by the CPU kernel's loader with the decoded weight: kept dense, on the device."""
        if isinstance(w, CsrParts):
            check_decoded_size(self.record, 4 * self.record.numel, "dense")
            w = w.to_scipy().toarray()
        self.weight = torch.tensor(np.asarray(w, dtype=np.float32).reshape(self.weight_shape), device=self.device)
        return []

    def __call__(self, x, w=None, b=None):
        if self.weight is None:
            w = w.float()
            self._check_weight(tuple(w.shape))
        else:
            w = self.weight
        shape = tuple(w.shape)
        nd = len(shape) - 2
        if not 1 <= nd <= 3 or x.dim() != nd + 2:
            raise ValueError(f"input of rank {x.dim()} for a weight of rank {nd + 2} (1 to 3 spatial axes)")
        n, c = x.shape[:2]
        if c != shape[0]:
            raise ValueError(f"input has {c} channels, the weight expects {shape[0]}")
        spatial, kernel = tuple(x.shape[2:]), shape[2:]
        strides = axis_ints(self.attrs, "strides", nd, 1)
        dilations = axis_ints(self.attrs, "dilations", nd, 1)
        begin, out = self._geometry(spatial, kernel, strides, dilations)
        c_out = shape[1] * self.group
        check_elements([n, c_out, *out], "ConvTranspose output")
        full = [(d - 1) * s + (k - 1) * dl + 1 for d, s, k, dl in zip(spatial, strides, kernel, dilations)]
        check_elements([n, c_out, *full], "ConvTranspose output")
        y = getattr(F, f"conv_transpose{nd}d")(x.float(), w, None, strides, 0, 0, self.group, dilations)
        grow = [max(0, bg + o - f) for bg, o, f in zip(begin, out, full)]  # past the full result: zeros
        if any(grow):
            y = F.pad(y, [p for g in reversed(grow) for p in (0, g)])
        for axis, (bg, o) in enumerate(zip(begin, out), 2):
            y = y.narrow(axis, bg, o)
        if b is not None:
            if tuple(b.shape) != (c_out,):
                raise ValueError(f"bias of shape {tuple(b.shape)}, expected ({c_out},)")
            y = y + b.float().reshape((1, c_out) + (1,) * nd)
        return (y.contiguous().to(x.dtype),)
