"""A smaller graph document: short value names, no node names, no attributes at their ONNX default.

The graph is stored as JSON (spec.md 4), and exporters write it for readers, not for size: values
named after source code paths ("/blocks/blocks.0/attn/MatMul_output_0"), stored twice per value,
and every attribute spelled out even where it equals the default the ONNX operator schema gives
(``"alpha":1.0,"beta":1.0,"transA":0`` on each Gemm). For a 100 MB model that is free; for a
compressed transformer of 25 KB it is a third of the file. ``ConvertOptions(compact_graph=True)``
(``dcm convert --compact-graph``) applies both passes below; the model computes the same thing.
"""
from __future__ import annotations

import numpy as np

from dcm.format.model import Model


def compact_names(model: Model) -> int:
    """Give every intermediate value a short name and drop node names; returns the bytes saved in
    the graph's names (about 40% of a transformer's GRPH section).

    Model inputs, outputs and tensors keep their names, so feeds, results and per-layer statistics
    read the same; error messages then name nodes by op.
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


def drop_default_attrs(model: Model) -> int:
    """Remove every node attribute whose value equals the default in the ONNX schema of the
    model's opset (an absent attribute means that default, for dcm's runtime as for ONNX's);
    returns how many were removed. Attributes whose default the schema only describes in words
    (Conv's strides, pads, dilations) are kept. Needs the ``onnx`` package (conversion time only)."""
    import onnx

    removed = 0
    for node in model.nodes:
        try:
            schema = onnx.defs.get_schema(node.op, model.opset, "")
        except onnx.defs.SchemaError:  # not a standard op: nothing to compare with
            continue
        for name in list(node.attrs):
            spec = schema.attributes.get(name)
            if spec is not None and spec.default_value.type and _same(node.attrs[name], onnx.helper.get_attribute_value(spec.default_value)):
                del node.attrs[name]
                removed += 1
    return removed


def _same(value, default) -> bool:
    """Whether an attribute value equals a schema default: floats compared as the float32 ONNX
    stores (LayerNormalization's epsilon 1e-5 arrives as 9.999999747378752e-06), strings as text."""
    if isinstance(default, bytes):
        return value == default.decode()
    if isinstance(default, float):
        return isinstance(value, (int, float)) and np.float32(value) == np.float32(default)
    if isinstance(default, int):
        return type(value) is int and value == default
    return isinstance(value, list) and isinstance(default, list) and value == default
