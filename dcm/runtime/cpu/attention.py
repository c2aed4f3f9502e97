"""Scaled dot-product attention as one kernel: the internal ``dcm.Attention`` op that the
``fuse_attention`` graph pass writes for MatMul, scale, mask Add, Softmax, MatMul.

float32 runs on the compiled kernel (native.attention, _pointwise.c): each task is one head's block
of query rows, end to end (scores by sgemm, scale, mask and softmax in the block, times v), and the
tasks split over the session's threads. A batch-1 model then has work for a second thread in every
head (BERT's 4 heads of 128 x 128: 180 -> 95 us on 2 threads, where one batched product per step
gained nothing), and the scores never take more than a block per thread at any sequence length.

Other types, and builds without the compiled kernels, run numpy's path: the scores are scaled,
masked and normalized in place (the unfused graph makes a fresh array at each step), and when all
heads' scores together would pass ``SCORES_MAX_BYTES`` (long sequences: 12 heads at 2048 tokens are
200 MB of float32) they are made one head at a time, so memory stays at one head's [queries, keys]
matrix.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from dcm.errors import UnsupportedOpError
from dcm.format.model import Node
from dcm.runtime.cpu import blas, native
from dcm.runtime.cpu.fused import register_internal
from dcm.runtime.cpu.pointwise import compiled
from dcm.runtime.cpu.registry import register
from dcm.runtime.kernel import Kernel
from dcm.runtime.optimize import ATTENTION

SCORES_MAX_BYTES = 8 << 20


def _softmax_last(s: np.ndarray, threads: int = 1) -> np.ndarray:
    """Softmax over the last axis, in place for float32 (the compiled kernel: one read of each row
    for its maximum and sum, one write, rows split over ``threads``) and float64 (other types compute
    in float32 and return in their own type, as the Softmax kernel does)."""
    if s.size and compiled(s):
        native.softmax(s, s, s.shape[-1], False, threads)
        return s
    t = s if s.dtype in (np.float32, np.float64) else s.astype(np.float32)
    t -= t.max(axis=-1, keepdims=True)
    np.exp(t, out=t)
    t /= t.sum(axis=-1, keepdims=True)
    return t.astype(s.dtype, copy=False)


def _out_shape(q, k, v, mask, scale) -> tuple[int, ...] | bool:
    """The compiled kernel's output shape for these inputs, or False where numpy's path runs them:
    vectors, empty axes, mismatched axes (numpy raises its own error), a scale of several values, or a
    mask or scale whose last two axes would widen the [queries, keys] scores."""
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2 or (scale is not None and scale.size != 1):
        return False
    (lq, d), (d_k, lk), (lk_v, dv) = q.shape[-2:], k.shape[-2:], v.shape[-2:]
    if d != d_k or lk != lk_v or 0 in (lq, d, lk, dv):
        return False
    extra = [x for x in (mask, scale) if x is not None]
    try:
        lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2], *(x.shape[:-2] for x in extra))
        if any(np.broadcast_shapes((lq, lk), x.shape[-2:]) != (lq, lk) for x in extra):
            return False
    except ValueError:
        return False
    return lead + (lq, dv)


def _factor_out(x: np.ndarray, factor: np.ndarray | None) -> tuple[np.ndarray, float]:
    """The Mul x * factor (operands in either order) as (a tensor, a number the scores take): the
    number where one operand is a single value that does not widen the other's shape or type, else
    the product itself and 1."""
    if factor is None:
        return x, 1.0
    for t, f in ((x, factor), (factor, x)):
        if f.size == 1 and f.ndim <= t.ndim and f.dtype == t.dtype and t.dtype.kind == "f":
            return t, f.item()
    return np.multiply(x, factor), 1.0


@functools.cache
def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    """The permutation that undoes ``perm`` (np.argsort's, kept: 6 us a call through numpy's wrappers,
    a fifth of a small attention's time)."""
    return tuple(int(a) for a in np.argsort(perm))


PLANS_MAX = 64  # shape signatures an Attention kernel keeps (a sequence length each, at most)


@register_internal(ATTENTION)
class Attention(Kernel):
    """softmax(scale_op(q @ k, scale) + mask) @ v, the arithmetic of the nodes it replaces, in their
    order; every input broadcasts as ONNX's MatMul, Mul/Div and Add do. With ``nan_to`` the rows a
    boolean mask hid everywhere (all NaN after the softmax) become that value, as the exported
    Where(IsNaN(p), nan_to, p) does."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.scale_op = self.attrs.get("scale_op", "")
        if self.scale_op not in ("", "Mul", "Div"):
            raise ValueError(f"scale_op must be '', 'Mul' or 'Div', got {self.scale_op!r}")
        self.nan_to = self.attrs.get("nan_to")  # Where(IsNaN(p), nan_to, p) after the Softmax
        self.scale_code = {"": 0, "Mul": 1, "Div": 2}[self.scale_op]  # native.attention's scale_op
        self.scaled_qk = bool(self.attrs.get("scaled_qk", 0))  # (q * q_factor) @ (k * k_factor), no scale
        if self.scaled_qk and self.scale_op != "Mul":
            raise ValueError(f"scaled_qk needs scale_op 'Mul', got {self.scale_op!r}")
        self.plans: dict[tuple, tuple[int, ...] | bool] = {}  # input shapes -> out's shape, False: numpy's path
        # the axis order the one Transpose reading the output wants (view_transposes), else None
        self.out_perm: tuple[int, ...] | None = None

    def _probabilities(self, s: np.ndarray) -> np.ndarray:
        p = _softmax_last(s, self.threads)
        if self.nan_to is not None:
            np.copyto(p, self.nan_to, where=np.isnan(p))
        return p

    def _scores(self, q, k, mask, scale) -> np.ndarray:
        s = blas.matmul(q, k, self.threads)
        for value, op in ((scale, self.scale_op), (mask, "Add")):
            if value is None:
                continue
            fn = np.add if op == "Add" else np.multiply if op == "Mul" else np.divide
            if np.broadcast_shapes(s.shape, np.shape(value)) == s.shape and np.result_type(s, value) == s.dtype:
                if op == "Add" and not np.any(value):
                    continue  # a mask of zeros (a text model's mask with no padding): s + 0 is s to the softmax
                fn(s, value, out=s)
            else:
                s = fn(s, value)
        return s

    def __call__(self, q, k, v, mask=None, scale=None, q_factor=None, k_factor=None):
        if self.scaled_qk:
            (q, fq), (k, fk) = _factor_out(q, q_factor), _factor_out(k, k_factor)
            scale = np.asarray(fq * fk, q.dtype) if fq * fk != 1.0 else None
        out = self._compiled(q, k, v, mask, scale)
        if out is not None:
            return (out,)
        both = [x for x in (mask, scale) if x is not None]
        if q.ndim >= 3 and k.ndim >= 2 and v.ndim >= 2:
            shape = (q.shape[-2], k.shape[-1])
            lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2], *(np.shape(x)[:-2] for x in both))
            inside = all(np.broadcast_shapes(shape, np.shape(x)[-2:]) == shape for x in both)
            if inside and math.prod(lead) > 1 and math.prod(lead + shape) * 4 > SCORES_MAX_BYTES:
                return (self._per_head(q, k, v, mask, scale, lead, shape),)
        return (blas.matmul(self._probabilities(self._scores(q, k, mask, scale)), v, self.threads),)

    def _compiled(self, q, k, v, mask, scale) -> np.ndarray | None:
        """The compiled kernel's result (native.attention: each task one head's block of query rows, so
        a second thread has work at batch 1 and the scores never pass a block per thread), or None
        where it does not apply: another type than float32, a scale that is not one value, a mask or
        scale that would widen the scores, vectors, empty axes, strides sgemm cannot read. The shapes'
        verdict is kept per shape signature: the checks cost 20 us, a BERT layer's attention 200."""
        if native.attention is None or q.dtype != np.float32 or k.dtype != np.float32 or v.dtype != np.float32:
            return None
        if (mask is not None and mask.dtype != np.float32) or (scale is not None and scale.dtype != np.float32):
            return None
        key = (q.shape, k.shape, v.shape, None if mask is None else mask.shape, None if scale is None else scale.shape)
        shape = self.plans.get(key)
        if shape is None:
            if len(self.plans) >= PLANS_MAX:
                self.plans.clear()
            shape = self.plans[key] = _out_shape(q, k, v, mask, scale)
        if not shape:
            return None
        if mask is not None and mask.ndim < 2:
            mask = mask.reshape((1,) * (2 - mask.ndim) + mask.shape)
        perm = self.out_perm
        if perm is not None and len(perm) == len(shape):  # rows stay whole: the Transpose keeps the last axis
            out = np.empty([shape[a] for a in perm], np.float32).transpose(_inverse(perm))
        else:
            out = np.empty(shape, np.float32)
        try:
            native.attention(q, k, v, out, mask, self.scale_code if scale is not None else 0,
                             scale.item() if scale is not None else 1.0, self.nan_to, self.threads)
        except ValueError:  # strides sgemm cannot read: numpy's path
            return None
        return out

    def _per_head(self, q, k, v, mask, scale, lead, shape) -> np.ndarray:
        """One head's scores at a time; the inputs are broadcast as views, never copied whole."""
        q, k, v = (np.broadcast_to(x, lead + x.shape[-2:]) for x in (q, k, v))
        mask, scale = (np.broadcast_to(x, lead + shape) if np.ndim(x) > 2 else x for x in (mask, scale))
        out = None
        for idx in np.ndindex(*lead):
            head = [x[idx] if np.ndim(x) > 2 else x for x in (mask, scale)]
            y = np.matmul(self._probabilities(self._scores(q[idx], k[idx], *head)), v[idx])
            if out is None:
                out = np.empty(lead + y.shape, y.dtype)
            out[idx] = y
        return out

    def describe(self) -> dict:
        return {"kernel": "attention", "per_head_above_bytes": SCORES_MAX_BYTES}


@register("Attention")
class OnnxAttention(Kernel):
    """ONNX's Attention op (opset 23), in the form torch's exporter writes for scaled_dot_product_attention:
    4-D Q, K, V of one head count (or K, V of one head), an optional boolean or additive mask,
    ``is_causal``, ``scale``, no KV cache, no softcap, the output alone. It runs on the fused kernel
    above; the converter gives any other form its ONNX function body (``takes_onnx``), which ran a
    197-token, 3-head block in 1.12 ms against onnxruntime's 0.73 through its separate nodes."""

    PLAIN_ATTRIBUTES = {"is_causal", "scale", "softmax_precision", "softcap", "qk_matmul_output_mode"}

    @classmethod
    def _plain(cls, attrs: dict, inputs: list[str], outputs: list[str]) -> bool:
        """Torch's form, as far as the node alone tells: its attributes, no KV cache, one output."""
        return not (set(attrs) - cls.PLAIN_ATTRIBUTES or attrs.get("softcap", 0.0)
                    or attrs.get("qk_matmul_output_mode", 0) or len(inputs) < 3 or any(inputs[4:]) or any(outputs[1:]))

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        if not self._plain(self.attrs, node.inputs, node.outputs):
            raise UnsupportedOpError(f"Attention {node.name!r}: only Q, K, V (and a mask), is_causal and scale are "
                                     f"run here (attributes {sorted(self.attrs)})")
        self.causal = bool(self.attrs.get("is_causal", 0))
        self.scale = self.attrs.get("scale")
        # rows a mask hides everywhere give 0, not NaN, as the ONNX function body has it
        self.core = Attention(Node(ATTENTION, [], [], {"scale_op": "Mul", "nan_to": 0.0}, node.name), ctx)

    @classmethod
    def takes_onnx(cls, node, types: dict) -> bool:
        from onnx import helper

        if not cls._plain({a.name: helper.get_attribute_value(a) for a in node.attribute}, list(node.input),
                          list(node.output)):
            return False
        dims = []
        for name in node.input[:3]:
            t = types.get(name)
            if t is None or not t.tensor_type.HasField("shape") or len(t.tensor_type.shape.dim) != 4:
                return False
            dims.append([d.dim_value if d.HasField("dim_value") else None for d in t.tensor_type.shape.dim])
        heads = {d[1] for d in dims}
        return None not in heads and (len(heads) == 1 or dims[1][1] == dims[2][1] == 1)

    def __call__(self, q, k, v, mask=None):
        if q.dtype == np.float16:  # float32 work, as onnx's reference has it (float16 sums lose 1e-3)
            wide = [None if x is None else x.astype(np.float32) if x.dtype == np.float16 else x for x in (q, k, v, mask)]
            return (self(*wide)[0].astype(np.float16),)
        lq, lk = q.shape[-2], k.shape[-2]
        if mask is not None and mask.dtype == np.bool_:
            mask = np.where(mask, 0.0, -np.inf).astype(q.dtype)
        if self.causal:
            tri = np.where(np.tril(np.ones((lq, lk), bool)), 0.0, -np.inf).astype(q.dtype)
            mask = tri if mask is None else mask + tri
        scale = self.scale if self.scale is not None else 1.0 / math.sqrt(q.shape[-1])
        kt = np.ascontiguousarray(np.swapaxes(k, -1, -2))
        return self.core(q, kt, v, mask, np.asarray(scale, q.dtype))

    def describe(self) -> dict:
        return {"kernel": "attention"}
