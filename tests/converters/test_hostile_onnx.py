"""Malformed ONNX protobufs found by benchmarks/fuzz.py's converter fuzzing: each is one
ConversionError naming the problem, not a ValueError, UnicodeDecodeError or TypeError from deep inside."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dcm.converters import from_onnx  # noqa: E402
from dcm.errors import ConversionError  # noqa: E402


def _model(node, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _short_initializer():
    t = numpy_helper.from_array(np.ones(3, np.float32), "b")
    t.dims[0] = 65535  # the data holds 3 values
    return _model(helper.make_node("Add", ["x", "b"], ["y"]), [t])


def _short_tensor_attribute():
    t = numpy_helper.from_array(np.zeros(1, np.float32), "v")
    t.dims[0] = 9
    return _model(helper.make_node("ConstantOfShape", ["x"], ["y"], value=t))


def _string_attribute(value):
    n = helper.make_node("Gelu", ["x"], ["y"])
    n.attribute.append(helper.make_attribute("approximate", value))
    return _model(n)


def _op_type(name: bytes) -> bytes:
    """A model whose op type is ``name``, which protobuf will hand back as bytes when it is not UTF-8."""
    return _model(helper.make_node("Relu", ["x"], ["y"])).SerializeToString().replace(b"Relu", name)


def _shape_without_input():
    return _model(helper.make_node("Shape", [], ["y"]))


def _input_without_shape():
    model = _model(helper.make_node("Relu", ["x"], ["y"]))
    model.graph.input[0].type.tensor_type.ClearField("shape")  # a rank-less input: not a scalar
    return model


CASES = {
    "initializer data shorter than its dims": (_short_initializer, "initializer 'b': its data does not match"),
    "tensor attribute data shorter than its dims": (_short_tensor_attribute, "attribute 'value': its data"),
    "string attribute not UTF-8": (lambda: _string_attribute(b"\xff"), "attribute 'approximate'.*not UTF-8"),
    "string list attribute not UTF-8": (lambda: _string_attribute([b"\xff"]), "not UTF-8"),
    "op type not UTF-8": (lambda: _op_type(b"R\x80lu"), "op type.*not UTF-8"),
    "Shape without its input": (_shape_without_input, "node 'Shape'"),
    "input without a shape": (_input_without_shape, "input 'x' declares no shape"),
}


@pytest.mark.parametrize("build, message", CASES.values(), ids=CASES.keys())
def test_malformed_protobuf_is_a_conversion_error(build, message):
    model = build()
    with pytest.raises(ConversionError, match=message):
        from_onnx(model if isinstance(model, bytes) else model.SerializeToString())


@pytest.mark.parametrize("axis", [2**31, 2**53 - 1, -2**31 - 1])
def test_attribute_past_int32_skips_onnx_shape_inference(axis, tmp_path):
    """onnx's shape inference narrows integer attributes to int32 and crashed the process (a segfault) on
    a LayerNormalization axis of 2**31: the converter leaves such a graph to its own checks, and the
    runtime names the attribute. Converted in a child process, so that a crash fails this test alone."""
    import subprocess
    import sys

    node = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y", "mean", "inv_std"], axis=axis)
    model = _model(node, [numpy_helper.from_array(np.ones(3, np.float32), n) for n in ("s", "b")])
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    code = ("import sys; from dcm.converters import from_onnx; from dcm.runtime import InferenceSession\n"
            f"m = from_onnx(open({str(path)!r}, 'rb').read())\n"
            "try:\n    InferenceSession(m)\nexcept Exception as e:\n    print(type(e).__name__, e)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "UnsupportedOpError" in run.stdout and "'axis'" in run.stdout, run.stdout
