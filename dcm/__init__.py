"""dcm: Deep Compression models you can ship and run."""
from dcm.errors import ConversionError, DcmError, EncodeError, FormatError, InputError, UnsupportedOpError
from dcm.format import read, validate, write
from dcm.runtime import InferenceSession

__version__ = "0.1.0"

__all__ = ["DcmError", "FormatError", "EncodeError", "InputError", "UnsupportedOpError", "ConversionError",
           "InferenceSession", "read", "write", "validate", "__version__"]
