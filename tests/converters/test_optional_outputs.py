"""ONNX nodes leave unwanted optional outputs unnamed; a .dcm names every node output (spec 4)."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dcm.converters import ConvertOptions  # noqa: E402
from dcm.converters.onnx_in import from_onnx  # noqa: E402
from dcm.format import read, to_bytes  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402


def test_unnamed_optional_outputs_are_named_or_dropped():
    rng = np.random.default_rng(0)
    hidden, features = 3, 2
    w = numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, features)).astype(np.float32), "W")
    r = numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32), "R")
    node = helper.make_node("LSTM", ["x", "W", "R"], ["", "h", ""], hidden_size=hidden)  # Y and Y_c unwanted
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, features])],
                              [helper.make_tensor_value_info("h", TensorProto.FLOAT, None)], [w, r])
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model = read(to_bytes(from_onnx(onnx_model, ConvertOptions(exact=True))))
    assert model.nodes[0].outputs == ["LSTM_0/unused_output_0", "h"]
    x = rng.standard_normal((5, 1, features)).astype(np.float32)
    import onnxruntime as ort

    want = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(InferenceSession(model).run(None, {"x": x})[0], want[0], rtol=1e-5, atol=1e-6)
