"""Gemm and MatMul with a constant weight: the fully connected layers."""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from dcm.encoder.codec import CsrParts
from dcm.errors import InputError, UnsupportedOpError
from dcm.runtime.cpu import blas, native
from dcm.runtime.cpu.activation import relu
from dcm.runtime.cpu.matmul import WeightMatmul
from dcm.runtime.cpu.registry import register
from dcm.runtime.fusion import add_and_activate
from dcm.runtime.kernel import LARGE_BATCH, Kernel, LoadContext


def _transposed(weight: CsrParts | np.ndarray) -> CsrParts | np.ndarray:
    if isinstance(weight, np.ndarray):
        return np.ascontiguousarray(weight.T)
    t = sp.csr_array(weight.to_scipy().T)  # CSC transpose -> CSR of W.T
    return CsrParts(t.shape, t.data, None, None, t.indices, t.indptr)


def _scale_rows(w: CsrParts | np.ndarray, scale: np.ndarray) -> CsrParts | np.ndarray:
    """W [out, in] with row j multiplied by scale[j] (its codebook, if any, given up for the values)."""
    if isinstance(w, np.ndarray):
        return (w * scale[:, None]).astype(np.float32)
    values = (w.values * np.repeat(scale, np.diff(w.indptr))).astype(np.float32)
    return CsrParts(w.shape2d, values, None, None, w.indices, w.indptr)


class _FullyConnected(Kernel):
    def _load(self, node, ctx: LoadContext, name: str, out_in: bool, out_scale: np.ndarray | None = None) -> None:
        """out_in: the stored tensor is already [out, in] (Gemm transB=1). out_scale: a factor per output
        (dcm.MatMulAdd's layer scale) taken into the weight."""
        self.mode, w, self.density = ctx.weight(node, name)
        if not out_in:
            w = _transposed(w)
        if out_scale is not None:
            w = _scale_rows(w, out_scale)
        # A chosen (not requested) sparse kernel hands row counts where BLAS wins to a dense copy: a
        # transformer's [batch * sequence, hidden] activation is many rows even at batch 1.
        by_rows = ctx.requested_mode(node, name) is None
        self.mm = WeightMatmul(self.mode, w, ctx.threads, prefer="right", vectors=ctx.batch_hint < LARGE_BATCH,
                               by_rows=by_rows, tune=ctx.tune)
        # per input shape: the one packed GEMM call a call of that shape came to (_keep_plan)
        self._plans: dict[tuple[int, ...], tuple] = {}

    def _planned(self, a: np.ndarray, bias: np.ndarray | None) -> np.ndarray | None:
        """The output for a of a shape whose call came to one packed GEMM call before: that call straight
        away (a small layer's ~3 us of Python in Gemm, WeightMatmul and their checks less). None: no
        plan, or an argument the kernel refused (a float64 or strided a), for the full path."""
        plan = self._plans.get(a.shape) if type(a) is np.ndarray else None
        if plan is None:
            return None
        out_shape, rows, threads, act = plan
        y = np.empty(out_shape, np.float32)
        try:  # by position (x, packed, out, threads, bias, relu, act): keywords cost ~0.4 us more
            native.gemm_packed(a.reshape(rows), self.mm.packed, y.reshape(rows[0], -1), threads, bias, self.relu, act)
        except native.REFUSED:
            self._plans.clear()
            return None
        return y

    def _keep_plan(self, a: np.ndarray, act: tuple[str, float, float] | None) -> None:
        """After a call that gave float32 a (rows = all but its last axis) to ``mm.fused_right`` with this
        kernel's relu and ``act``: keep that call's packed GEMM arguments where it came to one."""
        if type(a) is not np.ndarray or a.dtype != np.float32 or a.ndim < 1 or (self.epilogue is not None and act is None):
            return
        rows = a.size // a.shape[-1] if a.shape[-1] else 0
        found = self.mm.packed_call(rows, self.relu, act) if rows else None
        if found is None:
            return
        if len(self._plans) >= 16:
            self._plans.clear()
        self._plans[a.shape] = (a.shape[:-1] + (self.mm.shape[0],), (rows, a.shape[-1])) + found

    def describe(self) -> dict:
        info = {"kernel": self.mode, "density": self.density, "weight_shape": list(self.mm.shape)}
        if self.mm.tune:  # row count -> the kernel timing chose (filled in by the runs)
            info["tuned"] = {str(rows): kernel for rows, kernel in sorted(self.mm.tuned.items())}
        elif self.mm.by_rows:
            info["dense_rows"] = "by row count"
        if getattr(self.mm, "packed", None) is not None:  # the packed dense kernel from 2 rows (docs/gemm.md)
            info["packed"] = native.packed_simd()
        return info


@register("Gemm")
class Gemm(_FullyConnected):
    """Y = alpha * A' @ B' + beta * C; a constant B is a coded weight, a run-time B (a product of two
    computed values) goes to numpy's BLAS matmul."""

    weight_inputs = (1,)
    fuses_relu = True

    def __new__(cls, node, ctx):
        if cls is Gemm and not ctx.is_const(node.inputs[1]):
            return object.__new__(RuntimeGemm)
        return object.__new__(cls)

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        if not ctx.is_const(node.inputs[1]):  # a subclass (the GPU's) that kept the constant-weight path
            raise UnsupportedOpError(f"Gemm {node.name!r}: B must be a constant weight on this backend")
        self.trans_a = int(self.attrs.get("transA", 0))
        self.alpha = float(self.attrs.get("alpha", 1.0))
        self.beta = float(self.attrs.get("beta", 1.0))
        self._load(node, ctx, node.inputs[1], out_in=bool(self.attrs.get("transB", 0)))
        c_name = node.inputs[2] if len(node.inputs) > 2 else ""
        self.c_is_input = bool(c_name) and not ctx.is_const(c_name)
        self.c = (self.beta * ctx.const(c_name)).astype(np.float32) if c_name and not self.c_is_input else None
        # A C of one value per output column (the usual [out] bias, or a scalar) is a bias vector the
        # native kernel and the compiled epilogue add themselves; one with rows ([n, out], [n, 1])
        # broadcasts onto Y per the ONNX spec and is added by numpy.
        out = self.mm.shape[0]
        if self.c is not None and (self.c.ndim > 2 or self.c.shape[-1:] not in ((), (1,), (out,))):
            raise InputError(f"Gemm {node.name!r}: C of shape {list(self.c.shape)} does not broadcast to [rows, {out}]")
        self.bias_only = not self.c_is_input and (self.c is None or self.c.ndim < 2 or self.c.shape[0] == 1)
        self.fused_ok = self.mm.fuses_bias and self.alpha == 1.0 and self.bias_only
        self.bias = (np.ascontiguousarray(np.broadcast_to(self.c, (1, out)).reshape(-1))
                     if self.bias_only and self.c is not None else None)
        self.quiet = self.fused_ok  # all compiled, Inf/NaN counted in C

    def __call__(self, a, _b=None, c=None):
        if (y := self._planned(a, self.bias)) is not None:
            return (y,)
        a = a.T if self.trans_a else a
        if self.fused_ok and a.dtype == np.float32:
            act = None if self.epilogue is None else self.epilogue.act
            y = self.mm.fused_right(a, self.bias, self.relu, act)
            if not self.trans_a and a.ndim == 2:
                self._keep_plan(a, act)
            return (y if self.epilogue is None or act is not None else self.epilogue(y),)
        y = self.mm.right(a)
        if self.alpha == 1.0 and self.bias_only and add_and_activate(y, self.bias, self.relu, self.epilogue,
                                                                     threads=self.threads):
            return (y,)  # bias and activation in one compiled pass
        if self.alpha != 1.0:
            y *= np.float32(self.alpha)
        if self.c is not None:
            y += self.c
        elif self.c_is_input:
            y = y + np.float32(self.beta) * c
        if self.relu:
            relu(y, out=y)
        return (y if self.epilogue is None else self.epilogue(y),)


class RuntimeGemm(Gemm):
    """Gemm whose B is computed at run time: transposes are views, the product is one BLAS call."""

    weight_inputs = ()
    fuses_relu = False

    def __init__(self, node, ctx):
        Kernel.__init__(self, node, ctx)
        self.trans_a, self.trans_b = int(self.attrs.get("transA", 0)), int(self.attrs.get("transB", 0))
        self.alpha = float(self.attrs.get("alpha", 1.0))
        self.beta = float(self.attrs.get("beta", 1.0))

    def __call__(self, a, b, c=None):
        if a.ndim != 2 or b.ndim != 2:
            raise ValueError(f"Gemm takes matrices, got ranks {a.ndim} and {b.ndim}")
        y = blas.matmul(a.T if self.trans_a else a, b.T if self.trans_b else b, self.threads)
        if self.alpha != 1.0:
            y = y * y.dtype.type(self.alpha)
        if c is not None and self.beta != 0.0:
            y = y + (c if self.beta == 1.0 else c * c.dtype.type(self.beta))
        return (y.astype(np.result_type(a, b), copy=False),)

    def describe(self) -> dict:
        return {"kernel": "numpy"}


@register("MatMul")
class MatMul(_FullyConnected):
    """A [..., in] @ B [in, out] with B a constant weight (a run-time B: blas.matmul, split over the
    session's threads)."""

    weight_inputs = (1,)

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.const_b = ctx.is_const(node.inputs[1]) and len(ctx.model.tensors[node.inputs[1]].shape) == 2
        self.out_scale = self._out_scale(node, ctx) if self.const_b else None
        if self.const_b:
            self._load(node, ctx, node.inputs[1], out_in=False, out_scale=self.out_scale)
        else:
            self.weight_inputs = ()
            self.b = ctx.const(node.inputs[1]) if ctx.is_const(node.inputs[1]) else None

    def _out_scale(self, node, ctx) -> np.ndarray | None:
        """A factor per output to take into the weight (none for a plain MatMul)."""
        return None

    def __call__(self, a, b=None):
        if not self.const_b:
            return (blas.matmul(a, self.b if self.b is not None else b, self.threads),)
        if (y := self._planned(a, None)) is not None:
            return (y,)
        lead = a.shape[:-1]
        y = self.mm.right(a.reshape(-1, a.shape[-1]))
        if len(lead) and math.prod(lead) > 1:  # right() takes the packed kernel from 2 rows
            self._keep_plan(a, None)
        return (y.reshape(*lead, y.shape[-1]),)

    def describe(self) -> dict:
        return super().describe() if self.const_b else {"kernel": "numpy"}
