"""Pick, per tensor, the smallest encoding that stores it as asked, and say how much it changed.

Coding pays only when a tensor is large or sparse enough: a 16x1x3x3 depthwise kernel with an
8-bit codebook needs 1 KB of centroids for 576 bytes of float32, and float32 values with a
relative index cost more than plain float32 when few weights are zero. So every coded candidate
is compared with ``raw`` (the kept weights as float32, pruned ones zero), which is also exact:
no file is ever larger than the float32 model plus alignment.
"""
from __future__ import annotations

import numpy as np

from dcm.encoder.codec import IndexBits, encode_raw, encode_tensor, parse
from dcm.encoder.kmeans import assign
from dcm.format import constants as C
from dcm.format.model import TensorRecord


def encode_smallest(weights: np.ndarray, mask: np.ndarray | None = None, *, exact: bool = False,
                    code_bits: int = 8, index_bits: IndexBits = 5, name: str = "") -> TensorRecord:
    """The shortest of: the coded form asked for (a codebook of ``code_bits``, or float32 values
    with ``exact``) and raw float32 of the kept weights. Ties go to raw, which is the simplest
    to read and exact. Deterministic: the same input gives the same bytes."""
    w = np.asarray(weights, dtype=np.float32)
    keep = (w != 0) if mask is None else np.asarray(mask, dtype=bool)
    if keep.shape != w.shape:  # encode_tensor names the problem
        return encode_tensor(w, keep, code_bits=code_bits, index_bits=index_bits, name=name)
    raw = encode_raw(np.where(keep, w, np.float32(0)), name)
    if exact and keep.all():
        return raw  # float32 values plus an index of every position can only be larger
    if exact:
        coded = encode_tensor(w, keep, quantize=False, index_bits=index_bits, name=name)
    else:
        coded = encode_tensor(w, keep, code_bits=code_bits, index_bits=index_bits, name=name)
    return coded if len(coded.payload) < len(raw.payload) else raw


def largest_change(weights: np.ndarray, mask: np.ndarray | None, record: TensorRecord) -> float:
    """max |stored - original| over the tensor, divided by its largest |weight| (0 for all-zero).

    Computed without decoding the Huffman streams: a codebook encoding stores each kept weight as
    its nearest centroid (``kmeans.assign``), pruned weights become 0, raw and float32 encodings
    keep values exactly. ``tests/encoder/test_smallest.py`` checks this against a full decode.
    """
    w = np.asarray(weights, dtype=np.float32).ravel()
    scale = float(np.abs(w).max()) if w.size else 0.0
    if scale == 0.0:
        return 0.0
    keep = (w != 0) if mask is None else np.asarray(mask, dtype=bool).ravel()
    dropped = np.abs(w[~keep])
    change = float(dropped.max()) if dropped.size else 0.0
    codebook = None if record.encoding == C.ENC_RAW else parse(record).codebook
    kept = w[keep]
    if codebook is not None and kept.size:
        change = max(change, float(np.abs(codebook[assign(kept, codebook)] - kept).max()))
    return change / scale
