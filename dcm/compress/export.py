"""Lossless last step before writing: code the small tensors weight sharing left with few values.

The converter codes the weight matrices and stores the rest (biases, norm scales) as float32. A
bias shared over 2^b values (``share_weights(other_bits=b)``) holds at most 2^b distinct floats, so
a codebook of exactly those values plus Huffman codes stores it without changing one bit, in a
fraction of the bytes: 300 float32 biases take 1,200 bytes, 300 3-bit codes about 150.
"""
from __future__ import annotations

import numpy as np

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


def compact_names(model: Model) -> int:
    """Give every intermediate value a short name and drop node names; returns the bytes saved in
    the graph's names (about 40% of a transformer's GRPH section).

    Exporters name activations after source code paths ("/blocks/blocks.0/attn/MatMul_output_0"),
    which the graph document stores twice per value: as good as free for a 100 MB model, but a
    third of a 10 KB LeNet file. Model inputs, outputs and tensors keep their names, so feeds,
    results and per-layer statistics read the same; error messages then name nodes by op.
    """
    keep = {v.name for v in model.inputs} | {v.name for v in model.outputs} | set(model.tensors)
    rename: dict[str, str] = {}
    counter = 0
    before = sum(len(n.name) + sum(map(len, n.inputs + n.outputs)) for n in model.nodes)
    for node in model.nodes:
        for out in node.outputs:
            if out and out not in keep and out not in rename:
                while np.base_repr(counter, 36) in keep:
                    counter += 1
                rename[out] = np.base_repr(counter, 36)
                counter += 1
    for node in model.nodes:
        node.name = ""
        node.inputs = [rename.get(x, x) for x in node.inputs]
        node.outputs = [rename.get(x, x) for x in node.outputs]
    return before - sum(len(n.name) + sum(map(len, n.inputs + n.outputs)) for n in model.nodes)
