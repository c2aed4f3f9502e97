"""Kernels of the internal ops that the load-time graph passes write (``dcm.runtime.optimize``).

They sit in a registry of their own, ``INTERNAL``, which the session consults only for nodes a pass
made: the converters and the session's check of a file's ops know only ``REGISTRY``, so a .dcm file
that names one of these ops is refused as unsupported, and ``dcm export`` never meets one.
"""
from __future__ import annotations

import numpy as np

from dcm.runtime.cpu.linear import MatMul
from dcm.runtime.fusion import add_and_activate
from dcm.runtime.kernel import Registry, registrar
from dcm.runtime.optimize import MATMUL_ADD

INTERNAL: Registry = {}
register_internal = registrar(INTERNAL)


@register_internal(MATMUL_ADD)
class MatMulAdd(MatMul):
    """x [..., in] @ W [in, out] + b [out] with W and b constants: the compiled kernels add the bias as
    they write each row, and the packed dense one a following activation too (a transformer's Gelu;
    after the sparse one, a compiled pass); otherwise the bias is added in place into the product's
    fresh array, together with the activation, on float32 (``dcm.runtime.fusion``).
    A fourth input s [out] (a layer scale, ``fuse_matmul_scale``) is taken into W and b at load."""

    weight_inputs = (1, 2, 3)
    fuses_relu = True

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        if not self.const_b:  # the pass only fuses constant [in, out] weights
            raise ValueError(f"{MATMUL_ADD} needs a constant matrix weight")
        self.bias = np.ascontiguousarray(ctx.const(node.inputs[2]), dtype=np.float32).reshape(-1)
        if self.bias.shape != (self.mm.shape[0],):
            raise ValueError(f"bias has shape {list(self.bias.shape)}, the weight {self.mm.shape[0]} outputs")
        if self.out_scale is not None:
            self.bias = self.bias * self.out_scale

    def _out_scale(self, node, ctx) -> np.ndarray | None:
        if len(node.inputs) < 4:
            return None
        scale = np.asarray(ctx.const(node.inputs[3]), dtype=np.float32).reshape(-1)
        outputs = ctx.model.tensors[node.inputs[1]].shape[1]
        if scale.shape != (outputs,):
            raise ValueError(f"scale has {scale.size} values for a weight of {outputs} outputs")
        return scale

    def __call__(self, a, _w=None, _b=None, _s=None):
        if (y := self._planned(a, self.bias)) is not None:
            return (y,)
        lead = a.shape[:-1]
        x = a.reshape(-1, a.shape[-1])
        if self.mm.fuses_bias and x.dtype == np.float32:
            act = None if self.epilogue is None else self.epilogue.act
            y = self.mm.fused_right(x, self.bias, self.relu, act)
            self._keep_plan(a, act)
            if act is not None:
                return (y.reshape(*lead, y.shape[-1]),)
        else:
            y = self.mm.right(x)
            if add_and_activate(y, self.bias, self.relu, self.epilogue, threads=self.threads):  # one pass
                return (y.reshape(*lead, y.shape[-1]),)
            y += self.bias
            if self.relu:
                np.maximum(y, 0, out=y)
        if self.epilogue is not None:
            y = self.epilogue(y)
        return (y.reshape(*lead, y.shape[-1]),)


from dcm.runtime.cpu import attention  # noqa: E402,F401  (registers dcm.Attention, which needs INTERNAL above)
from dcm.runtime.cpu import scaled_conv  # noqa: E402,F401  (registers dcm.ScaledConv)
from dcm.runtime.cpu import nhwc  # noqa: E402,F401  (registers the channels-last ops)
