"""The squeeze-and-excitation scale folded into the 1x1 convolution that reads it
(dcm/runtime/channel_scale.py, dcm/runtime/cpu/scaled_conv.py): same results as onnxruntime on
every path, and the pass leaves a Mul whose product is read elsewhere alone."""
import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dcm.converters import ConvertOptions, from_onnx  # noqa: E402
from dcm.errors import DcmError  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from dcm.runtime.channel_scale import SCALED_CONV  # noqa: E402
from dcm.runtime.cpu import pointconv  # noqa: E402


def _model(c=8, c_out=4, scale="se", swap=False, tail=None, conv_attrs=None, bias=True, extra_use=False):
    """x -> [scale s] -> Mul(x, s) -> Conv 1x1 -> tail. scale "se": Sigmoid(GlobalAveragePool(x))
    [N, C, 1, 1]; "full": Tanh(x), the shape of x; "silu": Sigmoid(x); "row": ReduceMean over the channels [N, 1, H, W]."""
    rng = np.random.default_rng(0)
    nodes = {"se": [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Sigmoid", ["p"], ["s"])],
             "full": [helper.make_node("Tanh", ["x"], ["s"])],
             "silu": [helper.make_node("Sigmoid", ["x"], ["s"])],
             "row": [helper.make_node("ReduceMean", ["x"], ["s"], axes=[1], keepdims=1)]}[scale]
    nodes.append(helper.make_node("Mul", ["s", "x"] if swap else ["x", "s"], ["m"], name="scale"))
    conv_in = ["m", "w", "b"] if bias else ["m", "w"]
    nodes.append(helper.make_node("Conv", conv_in, ["y" if tail is None else "c"], name="proj", **(conv_attrs or {})))
    if tail == "relu":
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    elif tail == "residual":  # c_out == c: the block's input added back
        nodes.append(helper.make_node("Add", ["c", "x"], ["y"]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_use:
        nodes.append(helper.make_node("Neg", ["m"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    inits = [numpy_helper.from_array(rng.standard_normal((c_out, c, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(c_out).astype(np.float32), "b")]
    g = helper.make_graph(nodes, "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, c, None, None])],
                          outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def _check(m, x):
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)), threads=1)
    got = sess.run(None, {"x": x})
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
    return sess.describe()


def _ops(info):
    return {d["op"]: d for d in info if "folded_into" not in d and "fused_into" not in d}


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("tail", [None, "relu", "residual"])
@pytest.mark.parametrize("c_out,size", [(8, 6), (8, 2)])  # C_out under H * W: into the weight; over: on the input
def test_se_scale(batch, swap, tail, c_out, size):
    x = np.random.default_rng(1).standard_normal((batch, 8, size, size + 1)).astype(np.float32)
    info = _check(_model(c_out=c_out, swap=swap, tail=tail), x)
    ops = _ops(info)
    folded = "in the kernel" if pointconv.available() else "into the weight"
    assert "Mul" not in ops and "Conv" not in ops and ops[SCALED_CONV]["scale"] == folded
    assert {"op": "Mul", "name": "scale", "folded_into": "proj"} in info


@pytest.mark.parametrize("scale", ["full", "row"])
def test_other_operands(scale):
    """Not a per-channel scale: the kernel multiplies as the Mul would, then convolves."""
    x = np.random.default_rng(2).standard_normal((2, 8, 5, 5)).astype(np.float32)
    _check(_model(scale=scale), x)


@pytest.mark.parametrize("attrs", [{"strides": [2, 2]}, {"pads": [1, 0, 0, 1]}])
def test_other_convolutions(attrs):
    """Strided or padded 1x1 layers take the product on the input."""
    x = np.random.default_rng(3).standard_normal((2, 8, 7, 6)).astype(np.float32)
    info = _check(_model(conv_attrs=attrs, bias=False), x)
    assert _ops(info)[SCALED_CONV]["scale"] == "on the input"


@pytest.mark.parametrize("case", [{"extra_use": True}, {"scale": "silu"}, {"scale": "silu", "swap": True}])
def test_left_alone(case):
    """A product read elsewhere too, and a SiLU (which the kernel producing x applies itself)."""
    x = np.random.default_rng(4).standard_normal((1, 8, 5, 5)).astype(np.float32)
    ops = _ops(_check(_model(**case), x))
    assert "Mul" in ops and "Conv" in ops and SCALED_CONV not in ops


def test_wrong_channels():
    m = _model()
    sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)))
    with pytest.raises(DcmError):
        sess.run(None, {"x": np.ones((1, 5, 4, 4), np.float32)})
