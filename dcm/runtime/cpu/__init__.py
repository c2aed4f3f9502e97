"""CPU kernels (numpy / scipy.sparse), one class per ONNX op, collected in ``REGISTRY``."""
from dcm.runtime.cpu.registry import REGISTRY
from dcm.runtime.cpu import activation, conv, elementwise, linear, norm, pool, reduce, shape  # noqa: F401  (registers)

__all__ = ["REGISTRY"]
