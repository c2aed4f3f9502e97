"""CPU kernels (numpy / scipy.sparse), one class per ONNX op, collected in ``REGISTRY``."""
from dcm.runtime.cpu.registry import REGISTRY
from dcm.runtime.cpu import activation, conv, elementwise, linear, norm, pool, reduce, shape  # noqa: F401  (registers)
from dcm.runtime.cpu import conv_transpose, recurrent, resize  # noqa: F401  (registers: the layer ops of U-Nets and recurrent nets)
from dcm.runtime.cpu import detection, einsum, grid_sample, integer, quantize, spectral  # noqa: F401  (registers: NMS, Einsum, GridSample, integer products, Q/DQ, DFT/STFT)
from dcm.runtime.cpu import attention  # noqa: F401  (registers: Attention, and the internal dcm.Attention)
from dcm.runtime.cpu import generate, indexing  # noqa: F401  (registers: shape-computing and index ops)
from dcm.runtime.cpu import logic, unary  # noqa: F401  (registers: comparisons, boolean logic, one-input math)

__all__ = ["REGISTRY"]
