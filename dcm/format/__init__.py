"""The .dcm container (spec.md): bytes <-> Model. Knows nothing of torch or onnx."""
from dcm.format.model import Model, Node, TensorRecord, ValueInfo
from dcm.format.reader import read
from dcm.format.validate import validate
from dcm.format.writer import to_bytes, write

__all__ = ["Model", "Node", "TensorRecord", "ValueInfo", "read", "write", "to_bytes", "validate"]
