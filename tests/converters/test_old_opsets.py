"""Models older than opset 7 (PyTorch's exports of 2018 are at opset 6) are brought up to it by onnx's
version converter at conversion, PRelu's per-channel slope included; one it cannot upgrade is a
ConversionError that says so."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from dcm.converters import from_onnx
from dcm.errors import ConversionError
from dcm.runtime import InferenceSession


def _model(node, x_shape, consts, opset):
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, x_shape)],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_legacy_broadcast_is_upgraded():
    b = np.arange(4, dtype=np.float32)
    model = from_onnx(_model(helper.make_node("Add", ["x", "b"], ["y"], broadcast=1), [2, 3, 4], {"b": b}, 6))
    assert model.opset == 7 and "broadcast" not in model.nodes[0].attrs
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(InferenceSession(model).run(None, {"x": x})[0], x + b)


def test_opset_6_prelu_slope_is_per_channel():
    slope = np.array([0.1, 0.2, 0.3], np.float32)
    model = from_onnx(_model(helper.make_node("PRelu", ["x", "s"], ["y"]), [2, 3, 4, 5], {"s": slope}, 6))
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 5)).astype(np.float32)
    want = np.where(x > 0, x, x * slope[None, :, None, None])
    np.testing.assert_allclose(InferenceSession(model).run(None, {"x": x})[0], want, rtol=1e-6)


def test_a_model_the_version_converter_cannot_upgrade():
    with pytest.raises(ConversionError, match="opset 5 is older than the supported 7, and onnx's version converter"):
        from_onnx(_model(helper.make_node("Foo", ["x"], ["y"]), [2], {}, 5))
