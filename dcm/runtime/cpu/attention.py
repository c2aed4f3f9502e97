"""Scaled dot-product attention as one kernel: the internal ``dcm.Attention`` op that the
``fuse_attention`` graph pass writes for MatMul, scale, mask Add, Softmax, MatMul.

The scores are scaled, masked and normalized in place (the unfused graph makes a fresh array at
each step), and when all heads' scores together would pass ``SCORES_MAX_BYTES`` (long sequences:
12 heads at 2048 tokens are 200 MB of float32) they are made one head at a time, so memory stays at
one head's [queries, keys] matrix.
"""
from __future__ import annotations

import math

import numpy as np

from dcm.runtime.cpu import blas, native
from dcm.runtime.cpu.fused import register_internal
from dcm.runtime.cpu.pointwise import compiled
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

    def __call__(self, q, k, v, mask=None, scale=None):
        both = [x for x in (mask, scale) if x is not None]
        if q.ndim >= 3 and k.ndim >= 2 and v.ndim >= 2:
            shape = (q.shape[-2], k.shape[-1])
            lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2], *(np.shape(x)[:-2] for x in both))
            inside = all(np.broadcast_shapes(shape, np.shape(x)[-2:]) == shape for x in both)
            if inside and math.prod(lead) > 1 and math.prod(lead + shape) * 4 > SCORES_MAX_BYTES:
                return (self._per_head(q, k, v, mask, scale, lead, shape),)
        return (blas.matmul(self._probabilities(self._scores(q, k, mask, scale)), v, self.threads),)

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
