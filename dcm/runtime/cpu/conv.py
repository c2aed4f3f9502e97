"""Conv: im2col through a strided window view, then the weight [C_out/g, C_in/g*kh*kw] @ columns;
wide dense 3x3 stride-1 convolutions use Winograd F(2x2, 3x3) instead (winograd.py)."""
from __future__ import annotations

import numpy as np

from dcm.errors import UnsupportedOpError
from dcm.runtime.cpu.activation import relu
from dcm.runtime.cpu.matmul import WeightMatmul
from dcm.runtime.cpu.registry import register
from dcm.runtime.cpu.winograd import conv3x3, eligible, transform_weight
from dcm.runtime.cpu.windows import im2col, ints2, pads2, resolve_pads, spatial_2d
from dcm.runtime.kernel import LARGE_BATCH, Kernel


@register("Conv")
class Conv(Kernel):
    weight_inputs = (1,)
    allow_winograd = True
    fuses_relu = True

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        name = node.inputs[1]
        if not ctx.is_const(name):
            raise UnsupportedOpError(f"Conv {node.name!r}: the weight must be a constant")
        shape = ctx.model.tensors[name].shape
        if len(shape) not in (3, 4):
            raise UnsupportedOpError(f"Conv {node.name!r}: only 1-D and 2-D convolutions are supported")
        self.nd = len(shape) - 2
        self.out_channels = shape[0]
        self.kernel = (1, shape[2]) if self.nd == 1 else (shape[2], shape[3])
        self.group = int(self.attrs.get("group", 1))
        if self.out_channels % self.group:
            raise UnsupportedOpError(f"Conv {node.name!r}: {self.out_channels} outputs not divisible by group {self.group}")
        self.strides = ints2(self.attrs, "strides", self.nd, 1)
        self.dilations = ints2(self.attrs, "dilations", self.nd, 1)
        self.pad_attrs = pads2(self.attrs, self.nd)
        # Each sample adds one column per output pixel; unknown at load, but rarely under 16.
        self.mode, w, self.density = ctx.weight(node, name, columns_per_sample=LARGE_BATCH)
        self.in_channels = shape[1] * self.group
        self.winograd = None  # U [16, C_in, C_out] when this layer runs as Winograd F(2x2, 3x3)
        self.mms: list[WeightMatmul] = []
        self.index_cache: dict = {}  # im2col's gather index per small input shape
        if self.allow_winograd and self.mode == "dense" and eligible(self.kernel, self.strides, self.dilations,
                                                                      self.group, shape[1], shape[0]):
            self.winograd = transform_weight(w.reshape(shape))
        else:
            m = w.to_scipy() if self.mode == "sparse" else w
            per = self.out_channels // self.group
            self.mms = [WeightMatmul(self.mode, m[g * per : (g + 1) * per], ctx.threads) for g in range(self.group)]
        b = ctx.opt_const(node, 2)
        self.bias = None if b is None else b.astype(np.float32).reshape(1, -1, 1, 1)

    def __call__(self, x, _w=None, _b=None):
        x, was_1d = spatial_2d(x)
        n, c = x.shape[:2]
        kh, kw = self.kernel
        if c != self.in_channels:
            raise ValueError(f"Conv {self.node.name!r}: input has {c} channels, weight expects {self.in_channels}")
        begin, end = resolve_pads(self.pad_attrs, x.shape[2:], self.kernel, self.strides, self.dilations)
        if self.winograd is not None:
            return (conv3x3(x, self.winograd, begin, end, self.bias, self.relu),)
        pointwise = self.kernel == (1, 1) and self.group == 1 and not any(begin) and not any(end)
        if pointwise and (n == 1 or self.mode == "dense"):
            out = self._pointwise(x)
            return (out[:, :, 0, :] if was_1d else out,)
        cg = c // self.group
        cols, oh, ow, row = im2col(x, self.group, self.kernel, self.strides, self.dilations, begin, end,
                                   self.index_cache)
        outs = [mm.left(cols[g].reshape(cg * kh * kw, -1)).reshape(-1, n, oh, row) for g, mm in enumerate(self.mms)]
        y = np.concatenate(outs, axis=0) if len(outs) > 1 else outs[0]  # [C_out, N, OH, row], a new array
        if n == 1 and row == ow:  # already [1, C_out, OH, OW]: no copy (batch 1 at LeNet size)
            out = self._finish(y.reshape(1, -1, oh, ow))
        else:
            src = y[..., :ow].transpose(1, 0, 2, 3)  # [N, C_out, OH, OW] view: crop, transpose ...
            out = np.empty(src.shape, dtype=np.float32)
            if self.bias is not None:
                np.add(src, self.bias, out=out)  # ... and add the bias in the same pass
            else:
                np.copyto(out, src)
            if self.relu:
                relu(out, out=out)
        return (out[:, :, 0, :] if was_1d else out,)

    def _finish(self, out: np.ndarray) -> np.ndarray:
        """Bias and the fused Relu, in place on a new [N, C_out, OH, OW] array."""
        if self.bias is not None:
            out += self.bias
        if self.relu:
            relu(out, out=out)
        return out

    def _pointwise(self, x: np.ndarray) -> np.ndarray:
        """1x1 convolution without padding: W [C_out, C_in] @ x [C_in, pixels] per sample needs no
        im2col, and its result is already NCHW (ResNet-50's 1x1 layers skip two copies each)."""
        if self.strides != (1, 1):
            x = x[:, :, :: self.strides[0], :: self.strides[1]]
        n, c, oh, ow = x.shape
        mm = self.mms[0]
        if mm.mode == "dense":
            y = np.matmul(mm.w, x.reshape(n, c, oh * ow))  # [N, C_out, pixels]
        else:  # batch 1
            y = mm.left(x.reshape(c, oh * ow))
        return self._finish(y.reshape(n, -1, oh, ow))

    def describe(self) -> dict:
        return {"kernel": "winograd" if self.winograd is not None else self.mode, "density": self.density,
                "groups": self.group}
