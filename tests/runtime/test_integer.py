"""MatMulInteger, ConvInteger, QLinearMatMul and QLinearConv: exact integer sums (large depths, per
row / column / channel zero points, groups and pads) against onnx's reference, or by hand where the
reference departs from the spec."""
import numpy as np
import pytest

from tests.runtime.opcheck import check

OPSET = 21


def _q(rng, shape, dtype):
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


def test_matmul_integer_is_exact_at_depth():
    rng = np.random.default_rng(0)
    a = np.maximum(_q(rng, (3, 4096), np.uint8), 250).astype(np.uint8)  # sums past float32's exact 2^24
    b = np.maximum(_q(rng, (4096, 5), np.uint8), 250).astype(np.uint8)
    got = check("MatMulInteger", {"a": a, "b": b}, opset=OPSET, consts={"za": np.array(1, np.uint8),
                                                                         "zb": np.array(7, np.uint8)})[0]
    assert got.dtype == np.int32 and np.abs(got).max() > 2**24


def test_matmul_integer_per_row_and_column_zero_points():
    """A vector a_zero_point is per row of A, as the spec says (onnx's reference broadcasts it as a row;
    onnxruntime takes only a scalar)."""
    from onnx import TensorProto

    from dcm.converters import from_onnx
    from dcm.runtime import InferenceSession
    from tests.runtime.opcheck import one_node

    rng = np.random.default_rng(1)
    a, b = _q(rng, (4, 6), np.uint8), _q(rng, (6, 3), np.uint8)
    consts = {"za": _q(rng, (4,), np.uint8), "zb": _q(rng, (3,), np.uint8)}
    model = one_node("MatMulInteger", {"a": a, "b": b}, opset=OPSET, consts=consts)
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.INT32
    manual = (a.astype(np.int64) - consts["za"][:, None]) @ (b.astype(np.int64) - consts["zb"][None, :])
    np.testing.assert_array_equal(InferenceSession(from_onnx(model)).run(None, {"a": a, "b": b})[0], manual)


@pytest.mark.parametrize("attrs", [{}, {"pads": [1, 2, 1, 0], "strides": [2, 1]}, {"group": 2, "dilations": [2, 1]},
                                   {"auto_pad": "SAME_UPPER"}])
def test_conv_integer(attrs):
    rng = np.random.default_rng(2)
    x, w = _q(rng, (2, 4, 7, 6), np.uint8), _q(rng, (6, 4 // attrs.get("group", 1), 3, 2), np.uint8)
    check("ConvInteger", {"x": x}, attrs, opset=OPSET, consts={"w": w, "zx": np.array(100, np.uint8),
                                                                "zw": np.array(3, np.uint8)})


def test_qlinear_matmul_and_conv():
    rng = np.random.default_rng(3)
    a, b = _q(rng, (2, 3, 8), np.int8), _q(rng, (8, 4), np.int8)
    scales = {"sa": np.array(0.02, np.float32), "za": np.array(-3, np.int8), "b": b, "sb": np.array(0.03, np.float32),
              "zb": np.array(1, np.int8), "sy": np.array(0.1, np.float32), "zy": np.array(5, np.int8)}
    check("QLinearMatMul", {"a": a}, opset=OPSET, consts=scales, order=["a", "sa", "za", "b", "sb", "zb", "sy", "zy"])
    x, w = _q(rng, (1, 3, 6, 6), np.uint8), _q(rng, (4, 3, 3, 3), np.int8)
    conv = {"sx": np.array(0.05, np.float32), "zx": np.array(128, np.uint8), "w": w,
            "sw": np.array([0.01, 0.02, 0.03, 0.04], np.float32), "zw": np.zeros(4, np.int8),
            "sy": np.array(0.2, np.float32), "zy": np.array(120, np.uint8), "bias": rng.integers(-500, 500, 4).astype(np.int32)}
    check("QLinearConv", {"x": x}, {"pads": [1, 1, 1, 1]}, opset=OPSET, consts=conv,
          order=["x", "sx", "zx", "w", "sw", "zw", "sy", "zy", "bias"])
