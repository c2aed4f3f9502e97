"""QuantizeLinear / DequantizeLinear: scales and zero points per tensor, per axis and per block; a
CNN quantized to int8 QDQ form by onnxruntime's own tool converts (its weights folded to float and
coded) and runs as onnxruntime runs the same Q/DQ ops."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from dcm.converters import ConvertOptions, from_onnx
from dcm.errors import ExecutionError, UnsupportedOpError
from dcm.runtime import InferenceSession
from dcm.runtime.cpu.quantize import broadcast_param
from tests.runtime.opcheck import check, one_node

OPSET = 21


def test_scales_per_tensor_axis_and_block():
    shape = (2, 5, 3)
    assert broadcast_param(np.array([0.5], np.float32), shape, 1, 0, "scale").shape == ()
    assert broadcast_param(np.arange(5, dtype=np.float32), shape, 1, 0, "scale").shape == (1, 5, 1)
    blocks = broadcast_param(np.arange(12, dtype=np.float32).reshape(2, 2, 3), shape, 1, 4, "scale")
    assert blocks.shape == shape and blocks[0, :, 0].tolist() == [0, 0, 0, 0, 3]  # a block of 4, then one of 1
    with pytest.raises(ValueError, match=r"scale of shape \[4\] for axis 1 of an input \[2, 5, 3\]"):
        broadcast_param(np.ones(4, np.float32), shape, 1, 0, "scale")
    with pytest.raises(ValueError, match=r"expected \[2, 2, 3\]"):
        broadcast_param(np.ones((2, 3, 3), np.float32), shape, 1, 3, "scale")


@pytest.mark.parametrize("zero_type", [np.uint8, np.int8, np.int16])
def test_quantize_then_dequantize_against_the_reference(zero_type):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 4, 6)) * 50).astype(np.float32)  # some values saturate
    scale = np.array([0.5, 0.25, 1.0, 2.0], np.float32)
    zero = np.array([3, 0, 7, 1], zero_type)
    check("QuantizeLinear", {"x": x}, {"axis": 1}, opset=OPSET, consts={"s": scale, "z": zero})
    q = rng.integers(0, 100, (2, 4, 6)).astype(zero_type)
    check("DequantizeLinear", {"q": q}, {"axis": -2}, opset=OPSET, consts={"s": scale, "z": zero})
    block_scale = np.abs(rng.standard_normal((2, 4, 3))).astype(np.float32) + 0.1
    check("QuantizeLinear", {"x": x}, {"axis": 2, "block_size": 2, "output_dtype": int(helper.np_dtype_to_tensor_dtype(
        np.dtype(zero_type)))}, opset=OPSET, consts={"s": block_scale})


def test_bad_types_name_the_problem():
    model = from_onnx(one_node("QuantizeLinear", {"x": np.zeros(3, np.float32)}, {}, opset=OPSET,
                               consts={"s": np.ones((), np.float32)}))
    model.nodes[0].attrs["output_dtype"] = TensorProto.INT32
    with pytest.raises(UnsupportedOpError, match="output type int32 is not supported"):
        InferenceSession(model)
    dq = one_node("DequantizeLinear", {"q": np.zeros(3, np.int8)}, {}, opset=OPSET,
                  consts={"s": np.ones((), np.float32), "z": np.zeros((), np.uint8)})
    dq.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    with pytest.raises(ExecutionError, match="zero point of type uint8 for an input of type int8"):
        InferenceSession(from_onnx(dq)).run(None, {"q": np.zeros(3, np.int8)})


def test_a_cnn_quantized_by_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((10, 8)) * 0.3).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], [w1, w2])
    source, quantized = tmp_path / "float.onnx", tmp_path / "qdq.onnx"
    source.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    feeds = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.left = iter(feeds)

        def get_next(self):
            return next(self.left, None)

    quantize_static(str(source), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
    model = from_onnx(str(quantized), ConvertOptions(exact=True))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op for n in model.nodes}  # on the activations
    assert not any(n.op == "DequantizeLinear" and n.inputs[0] in model.tensors for n in model.nodes)  # weights folded
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the Q/DQ ops as written
    reference = ort.InferenceSession(str(quantized), options, providers=["CPUExecutionProvider"])
    sess = InferenceSession(model)
    for f in feeds:
        np.testing.assert_allclose(sess.run(None, f)[0], reference.run(None, f)[0], rtol=1e-5, atol=1e-6)


def test_dynamic_quantization_by_onnxruntime(tmp_path):
    """onnxruntime's quantize_dynamic: DynamicQuantizeLinear (its ONNX function body), MatMulInteger and
    ConvInteger with int8 weights, then a float rescale."""
    ort = pytest.importorskip("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n)
             for n, s in (("w1", (4, 3, 3, 3)), ("w2", (4 * 6 * 6, 16)), ("w3", (16, 5)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("MatMul", ["f", "w2"], ["h"]),
             helper.make_node("Relu", ["h"], ["g"]), helper.make_node("MatMul", ["g", "w3"], ["y"])]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])], inits)
    source, quantized = tmp_path / "float.onnx", tmp_path / "dynamic.onnx"
    source.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    quantize_dynamic(str(source), str(quantized), weight_type=QuantType.QInt8, op_types_to_quantize=["Conv", "MatMul"])
    model = from_onnx(str(quantized), ConvertOptions(exact=True))
    assert {"MatMulInteger", "ConvInteger"} <= {n.op for n in model.nodes}
    reference = ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"])
    sess = InferenceSession(model)
    for _ in range(3):
        x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
        want = reference.run(None, {"x": x})[0]
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
