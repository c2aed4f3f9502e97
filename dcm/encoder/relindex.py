"""Relative indexing of a sparse tensor (paper section 2; spec.md section 5.2).

Each stored entry carries the number of zeros skipped since the previous one, in row-major order
over the flattened tensor. With b index bits the values 0..M-1 (M = 2^b - 1) belong to real
entries; the symbol M is a *filler*: it skips M zeros and stores no value, so the code stream
holds exactly one code per real entry and no codebook slot is reserved for zero.
"""
from __future__ import annotations

import numpy as np

from dcm.errors import FormatError


def encode_positions(positions: np.ndarray, index_bits: int) -> np.ndarray:
    """Sorted flat positions [nnz] -> index symbols [nnz + fillers] (uint16)."""
    m = (1 << index_bits) - 1
    positions = np.asarray(positions, dtype=np.int64)
    gaps = np.diff(positions, prepend=-1) - 1  # zeros skipped before each entry
    fillers = gaps // m
    out = np.full(len(positions) + int(fillers.sum()), m, dtype=np.uint16)
    out[np.cumsum(fillers + 1) - 1] = gaps % m
    return out


def decode_positions(symbols: np.ndarray, index_bits: int, numel: int, nnz: int) -> np.ndarray:
    """Index symbols -> sorted flat positions [nnz], checking spec 5.2's rules on the way."""
    m = (1 << index_bits) - 1
    real = symbols != m
    if int(real.sum()) != nnz:
        raise FormatError(f"index stream holds {int(real.sum())} entries, header says {nnz}", rule="5.2")
    if len(symbols) and not real[-1]:
        raise FormatError("index stream ends with a filler", rule="5.2")
    pos = np.cumsum(symbols.astype(np.int64) + real) - 1  # symbols may be uint8: widen before adding
    out = pos[real]
    if len(out) and out[-1] >= numel:
        raise FormatError(f"index stream reaches position {int(out[-1])} of a {numel}-element tensor", rule="5.2")
    return out
