"""Execute a .dcm model from its compressed form: CPU (numpy/scipy) or GPU (torch) kernels."""
from dcm.runtime.session import InferenceSession, NodeArg

__all__ = ["InferenceSession", "NodeArg"]
