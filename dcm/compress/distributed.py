"""Under torch.distributed (DDP), every rank must hold the same masks, codebooks and labels.

They are computed from weights that DDP keeps identical, but a tie broken differently or a
non-deterministic kernel would make ranks disagree silently; broadcasting rank 0's copy makes
agreement a guarantee instead of a hope. Outside distributed training this does nothing.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def from_rank0(*tensors: torch.Tensor) -> None:
    """Overwrite ``tensors`` in place with rank 0's values when a process group is running."""
    if dist.is_available() and dist.is_initialized():
        for t in tensors:
            dist.broadcast(t, src=0)
