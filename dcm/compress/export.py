"""Lossless last step before writing: code the small tensors weight sharing left with few values.

The converter codes the weight matrices and stores the rest (biases, norm scales) as float32. A
bias shared over 2^b values (``share_weights(other_bits=b)``) holds at most 2^b distinct floats, so
a codebook of exactly those values plus Huffman codes stores it without changing one bit, in a
fraction of the bytes: 300 float32 biases take 1,200 bytes, 300 3-bit codes about 150.
"""
from __future__ import annotations

import numpy as np

from dcm.converters.compact import compact_names  # noqa: F401  (the demo's graph pass, re-exported)
from dcm.encoder.codec import decode_tensor, encode_tensor
from dcm.format import constants as C
from dcm.format.model import Model

MAX_SHARED_BITS = 8


def code_shared_tensors(model: Model) -> list[str]:
    """Re-encode in place every raw float32 tensor with at most 2^8 distinct non-zero values whose
    codebook form is smaller; returns the names re-encoded. Exact: each value is its own centroid."""
    changed = []
    for name, rec in model.tensors.items():
        if rec.encoding != C.ENC_RAW or rec.dtype != "float32" or rec.numel < 2:
            continue
        w = decode_tensor(rec)
        distinct = len(np.unique(w[w != 0]))
        if not distinct or distinct > 1 << MAX_SHARED_BITS:
            continue
        coded = encode_tensor(w, code_bits=max(1, int(np.ceil(np.log2(distinct)))), index_bits="auto", name=name)
        if len(coded.payload) < len(rec.payload):
            model.tensors[name] = coded
            changed.append(name)
    return changed
