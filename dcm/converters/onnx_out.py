""".dcm Model -> dense ONNX (decoded weights as initializers), to verify or serve a .dcm anywhere."""
from __future__ import annotations

import os

import numpy as np

from dcm.encoder.codec import decode_tensor
from dcm.format.model import Model, ValueInfo
from dcm.format.writer import atomic_write_bytes
from dcm.converters.onnx_in import ONNX_DTYPES, _onnx

TENSOR_TYPES = {v: k for k, v in ONNX_DTYPES.items()}


def _value_info(v: ValueInfo):
    onnx = _onnx()
    return onnx.helper.make_tensor_value_info(v.name, TENSOR_TYPES[v.dtype], list(v.shape))


def _onnx_attrs(attrs: dict) -> dict:
    """Tensor attributes (spec 4.3) back to TensorProtos; make_node would take an array for a list."""
    onnx = _onnx()
    return {k: onnx.numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v for k, v in attrs.items()}


def to_onnx(model: Model):
    """A ModelProto that passes onnx.checker and runs in onnxruntime."""
    onnx = _onnx()
    # np.require, not ascontiguousarray: that one turns a 0-d constant (a Gather index) into shape (1,).
    inits = [onnx.numpy_helper.from_array(np.require(decode_tensor(t), requirements="C"), t.name)
             for t in model.tensors.values()]
    nodes = [onnx.helper.make_node(n.op, n.inputs, n.outputs, name=n.name, **_onnx_attrs(n.attrs)) for n in model.nodes]
    graph = onnx.helper.make_graph(nodes, "dcm", [_value_info(v) for v in model.inputs],
                                   [_value_info(v) for v in model.outputs], inits)
    m = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", model.opset)],
                               producer_name="dcm")
    m.ir_version = min(m.ir_version, 9)
    for k, v in model.metadata.items():
        m.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(m)
    return m


def export_onnx(model: Model, path: str | os.PathLike) -> None:
    """Write the dense ONNX atomically (temp file + rename), like every dcm write."""
    atomic_write_bytes(path, to_onnx(model).SerializeToString())
