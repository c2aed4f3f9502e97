"""dcm: Deep Compression models you can ship and run."""
from dcm.errors import (ConversionError, DcmError, EncodeError, ExecutionError, FormatError, InputError,
                        UnsupportedOpError)
from dcm.format import read, validate, write
from dcm.runtime import InferenceSession

__version__ = "0.1.0"

__all__ = ["DcmError", "FormatError", "EncodeError", "InputError", "ExecutionError", "UnsupportedOpError",
           "ConversionError", "InferenceSession", "read", "write", "validate", "__version__"]


def __getattr__(name: str):
    # ``dcm.from_torch`` without importing torch/onnx for users who only load and run files.
    if name == "from_torch":
        from dcm.converters import from_torch

        return from_torch
    raise AttributeError(f"module 'dcm' has no attribute {name!r}")
