"""The kernel contract shared by the CPU and GPU registries, and what a kernel sees at load time.

A kernel is built once per node when a session loads (that is where weights are decoded and the
sparse/dense choice is made) and then called with the node's runtime inputs on every ``run``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from dcm.errors import UnknownLayerError, UnsupportedOpError
from dcm.format import constants as C
from dcm.format.model import Model, Node
from dcm.encoder.codec import CsrParts, check_decoded_size, decode_parts, decode_tensor, matrix_shape
from dcm.names import by_layer, layer_aliases

# Sparse wins only at low density and small batch (benchmarks/runtime.py, docs/runtime.md).
SPARSE_MAX_DENSITY_SMALL_BATCH = 0.30
SPARSE_MAX_DENSITY_LARGE_BATCH = 0.06
LARGE_BATCH = 16


def choose_mode(density: float, batch_hint: int, native_max_density: float | None = None) -> str:
    """``native_max_density``: the CPU's compiled sparse kernels are in use, and beat BLAS up to this
    density at any batch."""
    if native_max_density is not None:
        limit = native_max_density
    else:
        limit = SPARSE_MAX_DENSITY_SMALL_BATCH if batch_hint < LARGE_BATCH else SPARSE_MAX_DENSITY_LARGE_BATCH
    return "sparse" if density <= limit else "dense"


@dataclass
class LoadContext:
    """Access to the model's constants for kernels being built, with per-layer kernel choices."""

    model: Model
    batch_hint: int = 1
    modes: dict[str, str] | str | None = None  # "sparse" / "dense" for all, or per node / weight name
    threads: int = 1
    device: str = "cpu"  # torch device of the GPU backend's kernels
    native_max_density: float | None = None  # set when the CPU's compiled sparse kernels are in use
    tune: bool = False  # time close kernel choices on the first run (dcm.runtime.cpu.tune)
    _dense: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Per-layer modes re-keyed by node name: users write the torch module path (``fc1``), the
        node name (``/fc1/Gemm``) or the weight name (``fc1.weight``); an unknown name is an error."""
        if not isinstance(self.modes, dict):
            return
        layers = {n.name: layer_aliases(n.name, n.inputs[1]) for n in self.model.nodes
                  if len(n.inputs) > 1 and n.inputs[1] in self.model.tensors
                  and len(self.model.tensors[n.inputs[1]].shape) >= 2}
        self.modes = by_layer(self.modes, layers, "kernels", UnknownLayerError)

    def is_const(self, name: str) -> bool:
        return name in self.model.tensors

    def const(self, name: str) -> np.ndarray:
        """Dense value of a constant (decoded once and cached)."""
        if name not in self._dense:
            self._dense[name] = decode_tensor(self.model.tensors[name])
        return self._dense[name]

    def opt_const(self, node: Node, i: int) -> np.ndarray | None:
        """Constant input i of ``node``, None when absent; a runtime value here is unsupported."""
        if i >= len(node.inputs) or not node.inputs[i]:
            return None
        if not self.is_const(node.inputs[i]):
            raise UnsupportedOpError(f"node {node.name or node.op!r} ({node.op}): input {i} "
                                     f"({node.inputs[i]!r}) must be a constant")
        return self.const(node.inputs[i])

    def weight(self, node: Node, name: str, columns_per_sample: int = 1) -> tuple[str, CsrParts | np.ndarray, float]:
        """Decode a weight for a matmul-like kernel: (mode, CSR parts or dense array, density).

        ``columns_per_sample``: columns each sample adds to the right-hand matrix (a convolution's
        output pixels), since the sparse/dense trade-off depends on the total column count.
        """
        rec = self.model.tensors[name]
        numel = max(rec.numel, 1)
        if rec.encoding == C.ENC_RAW:
            dense = self.const(name).astype(np.float32, copy=False).reshape(matrix_shape(rec.shape))
            density = float(np.count_nonzero(dense)) / numel
            parts = None
        else:
            parts = decode_parts(rec)
            density = len(parts.values) / numel
        mode = self._mode_for(node, name, density, self.batch_hint * columns_per_sample)
        if mode == "dense":
            if parts is None:
                return mode, dense, density
            check_decoded_size(rec, 4 * rec.numel, "dense")
            return mode, parts.to_scipy().toarray(), density
        if parts is None:
            import scipy.sparse as sp

            m = sp.csr_array(dense)
            parts = CsrParts(m.shape, m.data, None, None, m.indices, m.indptr)
        return mode, parts, density

    def requested_mode(self, node: Node, name: str) -> str | None:
        """The mode the user asked for this layer ("sparse" or "dense"), None: choose."""
        m = self.modes
        if isinstance(m, dict):
            m = m.get(node.name)
        if m is not None and m not in ("sparse", "dense"):
            raise ValueError(f"kernel mode must be 'sparse' or 'dense', got {m!r}")
        return m

    def _mode_for(self, node: Node, name: str, density: float, columns: int) -> str:
        return self.requested_mode(node, name) or choose_mode(density, columns, self.native_max_density)


class Kernel:
    """Base class: ``weight_inputs`` are input positions the kernel consumes at load time."""

    weight_inputs: tuple[int, ...] = ()
    # The kernel can apply a following activation to its own output: a Relu (``relu`` set by the
    # session) or any other (``epilogue``, a fusion.Epilogue it calls on its fresh output).
    fuses_relu = False
    # It adds a residual input to its output before the activation (a fused Add: ``residual_add``
    # set by the session, the Add's kernel, for shapes or types it cannot add in place); the
    # session passes that value as argument ``residual_arg``.
    fuses_residual = False
    residual_arg = 0
    residual_add = None
    uses_scratch = False  # it takes work arrays from windows.scratch_arrays (the session releases them)
    # No numpy floating-point warnings on any input, Inf and NaN included: a session whose kernels are
    # all quiet skips np.errstate, 0.9 us per run (LeNet-300-100 runs in 17 us). Set only where the
    # work is compiled or cannot warn; tests/runtime/test_session.py runs them with warnings as errors.
    quiet = False
    relu = False
    epilogue = None

    def __init__(self, node: Node, ctx: LoadContext | None):
        self.node = node
        self.attrs = node.attrs
        # the session's: compiled kernels split large work over this many (one where the converter
        # folds constants, which builds kernels without a session: ctx None)
        self.threads = ctx.threads if ctx is not None else 1

    def __call__(self, *inputs: Any) -> tuple:
        raise NotImplementedError

    @classmethod
    def takes_onnx(cls, node, types: dict) -> bool:
        """Whether this kernel runs the ONNX node (a NodeProto; ``types``: the TypeProtos known of its
        values) as it is. Where it does not, the converter replaces the node by its ONNX function body
        (dcm/converters/functions.py); a kernel that runs only some forms of its op says which here."""
        return True

    def load_input(self, ctx: LoadContext, i: int) -> np.ndarray | None:
        """Input i decoded now when it is a constant (the kernel then gets None for it on every run,
        and keeps what this returns); None when it is absent or computed at run time (the kernel
        then gets its value on every run). Shapes, axes and pads are usually constants: reading
        them once at load keeps the common case fast without refusing graphs that compute them."""
        name = self.node.inputs[i] if i < len(self.node.inputs) else ""
        if name and ctx.is_const(name):
            self.weight_inputs = tuple(sorted({*self.weight_inputs, i}))
            return ctx.const(name)
        self.weight_inputs = tuple(j for j in self.weight_inputs if j != i)
        return None

    def describe(self) -> dict[str, Any]:
        """What ``dcm inspect``/``dcm bench`` show about this kernel (mode, density)."""
        return {}


Registry = dict[str, type[Kernel]]


def registrar(registry: Registry) -> Callable[..., Callable[[type[Kernel]], type[Kernel]]]:
    def register(*ops: str):
        def deco(cls: type[Kernel]) -> type[Kernel]:
            for op in ops:
                registry[op] = cls
            return cls
        return deco
    return register
