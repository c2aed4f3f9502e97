"""GPU backend: the same graph on torch tensors (cuSPARSE CSR for sparse layers, cuDNN/cuBLAS for
dense ones). torch is imported only when a session asks for this backend."""
from __future__ import annotations

from typing import Any

from dcm.errors import DcmError


def open_backend(device: str) -> tuple[str, dict]:
    try:
        import torch
    except ImportError:
        raise DcmError("the GPU backend needs torch: pip install 'dcm[torch]'") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DcmError("device 'cuda' asked for, but torch sees no CUDA GPU (torch.cuda.is_available() is False)")
    from dcm.runtime.cpu import REGISTRY as CPU_REGISTRY
    from dcm.runtime.gpu.registry import REGISTRY
    from dcm.runtime.gpu import (activation, conv_transpose, elementwise, indexing, layout, linear,  # noqa: F401
                                 norm, pointwise, recurrent, reduce, resize, spatial)  # (they register their kernels)
    from dcm.runtime.gpu.fallback import fill_from

    fill_from(CPU_REGISTRY, REGISTRY)  # the ops without a torch kernel run on the CPU (fallback.py)

    return device, REGISTRY


def to_device(x: Any, device: str):
    """numpy (or torch) -> torch tensor on ``device``; never aliases the caller's numpy array."""
    import numpy as np
    import torch

    if isinstance(x, torch.Tensor):
        return x.to(device)
    return torch.as_tensor(np.array(x, copy=True), device=device)
