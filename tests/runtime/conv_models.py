"""A Conv node, optionally followed by the activation the runtime fuses into it, as an ONNX model:
the models the compiled convolution kernels' tests run through dcm and onnxruntime."""
from __future__ import annotations

from typing import Any

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper


def conv_model(w: np.ndarray, b: np.ndarray | None, x_shape: tuple[int, ...], attrs: dict[str, Any],
               act: str | None = None) -> ModelProto:
    """Conv(x, w[, b]) with ``attrs``, then ``act`` ("Clip" is ReLU6; any other name an op of one input)."""
    inits = [numpy_helper.from_array(w, "w")]
    inputs = ["x", "w"]
    if b is not None:
        inits.append(numpy_helper.from_array(b, "b"))
        inputs.append("b")
    nodes = [helper.make_node("Conv", inputs, ["c" if act else "y"], **attrs)]
    if act == "Clip":
        inits += [numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi")]
        nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"]))
    elif act:
        nodes.append(helper.make_node(act, ["c"], ["y"]))
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m
