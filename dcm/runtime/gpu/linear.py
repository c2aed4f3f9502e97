"""Gemm, MatMul and Einsum on torch: a constant weight as sparse CSR @ activations, or dense; a weight
computed at run time through torch.matmul; Einsum through torch.einsum."""
from __future__ import annotations

import numpy as np
import torch

from dcm.encoder.codec import CsrParts
from dcm.runtime.cpu import einsum as cpu_einsum, linear as cpu
from dcm.runtime.cpu.matmul import WeightMatmul
from dcm.runtime.gpu.fallback import on_host
from dcm.runtime.gpu.registry import register
from dcm.runtime.gpu.weights import TorchWeight


def to_torch(mm: WeightMatmul, device: str) -> TorchWeight:
    """Move a CPU kernel's decoded weight to the torch device (the CPU kernel did the decoding;
    the torch backend builds kernels with threads=1, so a sparse weight is one CSR block)."""
    if mm.mode == "dense":
        return TorchWeight("dense", mm.w, device)
    (m,) = mm.blocks
    return TorchWeight("sparse", CsrParts(m.shape, m.data, None, None, m.indices, m.indptr), device)


@register("Gemm")
class Gemm(cpu.Gemm):
    fuses_relu = False  # the CPU kernel's fused Relu is numpy; this one has none

    def __new__(cls, node, ctx):
        if cls is Gemm and not ctx.is_const(node.inputs[1]):
            kernel = object.__new__(RuntimeGemm)
            kernel.__init__(node, ctx)  # not a Gemm instance: Python would skip it
            return kernel
        return object.__new__(cls)

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.mm = to_torch(self.mm, ctx.device)
        self.c = None if self.c is None else torch.as_tensor(self.c, device=ctx.device)

    def __call__(self, a, _b=None, c=None):
        given = a.dtype  # the weight is float32: float16 and float64 inputs are computed in it
        a = a.float()
        a = a.T if self.trans_a else a
        y = self.mm.right(a)
        if self.alpha != 1.0:
            y = y * self.alpha
        if self.c is not None:
            y = y + self.c
        elif self.c_is_input:
            y = y + self.beta * c
        return (y.to(given),)


class RuntimeGemm(cpu.RuntimeGemm):
    """Gemm whose B is computed at run time (attention scores): one torch.matmul."""

    def __call__(self, a, b, c=None):
        if not a.is_floating_point():  # CUDA has no integer matmul: int32/int64 Gemm runs on the host
            return on_host(super().__call__, a.device, a, b, c)
        if a.dim() != 2 or b.dim() != 2:
            raise ValueError(f"Gemm takes matrices, got ranks {a.dim()} and {b.dim()}")
        y = (a.T if self.trans_a else a) @ (b.T if self.trans_b else b)
        if self.alpha != 1.0:
            y = y * self.alpha
        if c is not None and self.beta != 0.0:
            y = y + (c if self.beta == 1.0 else c * self.beta)
        return (y,)

    def describe(self) -> dict:
        return {"kernel": "torch"}


@register("MatMul")
class MatMul(cpu.MatMul):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        if self.const_b:
            self.mm = to_torch(self.mm, ctx.device)
        elif self.b is not None:
            self.b = torch.as_tensor(self.b, device=ctx.device)

    def __call__(self, a, b=None):
        if not self.const_b:
            b = self.b if self.b is not None else b
            if not a.is_floating_point():  # CUDA has no integer matmul: int32/int64 MatMul runs on the host
                return on_host(lambda p, q: (np.matmul(p, q),), a.device, a, b)
            return (torch.matmul(a, b),)
        y = self.mm.right(a.float().reshape(-1, a.shape[-1]))  # float32, as the weight
        return (y.reshape(*a.shape[:-1], y.shape[-1]).to(a.dtype),)


@register("Einsum")
class Einsum(cpu_einsum.Einsum):
    """torch.einsum on the explicit equation the CPU kernel parsed (its checks, its implicit output);
    integer operands on the host, as MatMul's."""

    def __call__(self, *xs):
        self.check(xs)
        if not xs[0].is_floating_point():
            return on_host(super().__call__, xs[0].device, *xs)
        return (torch.einsum(self.equation.text, *xs),)

    def describe(self) -> dict:
        return {"kernel": "torch", "equation": self.equation.text}
