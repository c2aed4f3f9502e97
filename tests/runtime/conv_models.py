"""A Conv node, optionally followed by the activation the runtime fuses into it, as an ONNX model,
and its check against onnxruntime: the compiled convolution kernels' tests."""
from __future__ import annotations

from typing import Any

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper

from dcm.converters import ConvertOptions, from_onnx
from dcm.runtime import InferenceSession


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


def check_kernel(m: ModelProto, x: np.ndarray, kernel: str, threads: int = 1, tol: float = 1e-5) -> InferenceSession:
    """dcm's session of ``m`` takes ``kernel`` for its Conv and gives onnxruntime's output (NaN where it
    has NaN) within ``tol``; the session, for further checks."""
    import onnxruntime as ort

    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)), threads=threads)
    assert sess.describe()[0]["kernel"] == kernel
    got = sess.run(None, {"x": x})[0]
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
    return sess
