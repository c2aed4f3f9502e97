"""Models in and out: ONNX -> .dcm, PyTorch -> .dcm (through ONNX), .dcm -> ONNX."""
from dcm.converters.onnx_in import ConvertOptions, from_onnx, load_onnx
from dcm.converters.onnx_out import export_onnx, to_onnx
from dcm.converters.torch_in import from_torch

__all__ = ["ConvertOptions", "from_onnx", "load_onnx", "export_onnx", "to_onnx", "from_torch"]
