"""Activations and the softmax family on the CPU runtime against onnx's reference evaluator."""
import math

import numpy as np
import pytest

pytest.importorskip("onnx")

from dcm.converters import ConvertOptions, from_onnx  # noqa: E402
from dcm.errors import ExecutionError, UnsupportedOpError  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from tests.runtime.opcheck import check, one_node, rand, run_both  # noqa: E402

FLOATS = [np.float32, np.float16, np.float64]


@pytest.mark.parametrize("op,attrs,opsets", [
    ("Elu", {}, [7]), ("Elu", {"alpha": 0.5}, [22]),
    ("Selu", {}, [7]), ("Selu", {"alpha": 1.5, "gamma": 2.0}, [22]),
    ("Celu", {}, [12]), ("Celu", {"alpha": 2.0}, [12]),
    ("Softplus", {}, [7, 22]), ("Softsign", {}, [7, 22]),
    ("HardSigmoid", {}, [7]), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, [22]),
    ("HardSwish", {}, [14, 22]), ("Mish", {}, [18, 22]),
    ("ThresholdedRelu", {}, [10]), ("ThresholdedRelu", {"alpha": 0.5}, [22]),
    ("Gelu", {}, [20]), ("Gelu", {"approximate": "tanh"}, [20]), ("Gelu", {"approximate": "none"}, [20]),
    ("Swish", {}, [24]), ("Swish", {"alpha": 1.7}, [24]),
    ("Relu", {}, [7, 14]), ("LeakyRelu", {"alpha": 0.1}, [7, 16]), ("LeakyRelu", {"alpha": -2.0}, [16]),
    ("Sigmoid", {}, [7, 13]), ("Tanh", {}, [7, 13]),
])
@pytest.mark.parametrize("dtype", FLOATS)
def test_activation(op, attrs, opsets, dtype):
    x = rand((2, 3, 5), dtype, low=-6, high=6)
    x.flat[:3] = [0, -0.0, 1]  # the branch points
    # onnx's reference runs Gelu through its function body, whose constants are float32.
    rtol = 1e-7 if op == "Gelu" and dtype == np.float64 else None
    for opset in opsets:
        check(op, {"x": x}, attrs, opset=opset, rtol=rtol)


@pytest.mark.parametrize("op,attrs", [("Softplus", {}), ("Mish", {}), ("Elu", {}), ("Selu", {}), ("Celu", {}),
                                      ("Gelu", {}), ("Swish", {}), ("Sigmoid", {}), ("HardSwish", {})])
def test_activation_on_extremes(op, attrs):
    """Large inputs must not overflow into NaN on a branch that np.where discards."""
    x = np.array([-1e30, -100, -1, 0, 1, 100, 1e30, np.inf, -np.inf, np.nan], np.float32)
    got = check(op, {"x": x}, attrs, opset=24 if op == "Swish" else 22)[0]
    assert np.isfinite(got[:7]).all()


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-6), (np.float64, 1e-14)])
def test_gelu_is_the_onnx_formula(dtype, rtol):
    x = rand((64,), dtype)
    got = InferenceSession(from_onnx(one_node("Gelu", {"x": x}, opset=20), ConvertOptions(exact=True))).run(None, {"x": x})[0]
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    assert got.dtype == dtype
    np.testing.assert_allclose(got, exact, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.float16, np.float64])
def test_relu_keeps_integer_and_half_types(dtype):
    check("Relu", {"x": rand((3, 4), dtype, low=-5, high=5)}, opset=14)


@pytest.mark.parametrize("slope_shape", [(3, 1, 1), (1,), (), (4,), (2, 3, 4, 4)])
@pytest.mark.parametrize("opset", [7, 9, 16])
def test_prelu_slope_broadcasts_unidirectionally(slope_shape, opset):
    x = rand((2, 3, 4, 4))
    slope = rand(slope_shape, seed=1, low=0, high=1)
    check("PRelu", {"x": x, "slope": slope}, opset=opset)  # run-time slope
    check("PRelu", {"x": x}, consts={"slope": slope}, opset=opset)  # constant slope


@pytest.mark.parametrize("slopes", [(0.25, 1.0, 0.01), (0.25, 0.0, 0.5), (0.5, 2.0, -0.5)],
                         ids=["fractional", "a zero slope", "outside (0, 1]"])
def test_prelu_constant_slopes_keep_inf_and_nan(slopes):
    """A constant slope in (0, 1] everywhere runs as max(x, slope x); a zero slope or one past 1 stays on
    np.where: either way Inf and NaN come out where onnx's reference has them."""
    x = rand((2, 3, 4), low=-4, high=4)
    x[0, :, 0], x[0, :, 1], x[1, :, 2] = np.inf, -np.inf, np.nan
    check("PRelu", {"x": x}, consts={"slope": np.asarray(slopes, np.float32).reshape(3, 1)}, opset=16)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_prelu_integers(dtype):
    check("PRelu", {"x": rand((2, 5), dtype, low=-9, high=9), "slope": rand((5,), dtype, seed=1, low=0, high=3)},
          opset=16)


def test_prelu_slope_that_would_grow_the_input_is_refused():
    feeds = {"x": rand((3,)), "slope": rand((2, 3), seed=1)}
    model = one_node("PRelu", feeds, opset=16)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "n"
    with pytest.raises(ExecutionError, match=r"PRelu_0.*does not broadcast"):
        InferenceSession(from_onnx(model, ConvertOptions(exact=True))).run(None, feeds)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.int8, np.int32, np.int64, np.uint8])
def test_clip_bounds_as_inputs_constants_or_absent(dtype):
    unsigned = np.dtype(dtype).kind == "u"
    x = rand((3, 5), dtype, low=0 if unsigned else -10, high=10)
    lo, hi = np.array(2 if unsigned else -3, dtype), np.array(6, dtype)
    check("Clip", {"x": x, "lo": lo, "hi": hi}, opset=13)  # run-time bounds
    check("Clip", {"x": x}, consts={"lo": lo}, opset=13)  # min only
    check("Clip", {"x": x, "hi": hi}, order=["x", "", "hi"], opset=13)  # max only
    check("Clip", {"x": x}, opset=13)
    if np.dtype(dtype).kind == "f":
        check("Clip", {"x": x}, {"min": -3.0, "max": 6.0}, opset=7)  # attributes before opset 11
        check("Clip", {"x": x}, consts={"lo": lo, "hi": hi}, opset=11)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [None, 0, 1, 2, -1, -3])
@pytest.mark.parametrize("opset", [7, 11, 13])
def test_softmax_axis_semantics_before_and_after_opset_13(op, axis, opset):
    """Before 13 the input is coerced to 2-D at ``axis`` (default 1); from 13 it is one axis (default -1)."""
    x = rand((2, 3, 4), low=-5, high=5)
    # onnx's reference evaluator applies the opset-13 rule at every opset: onnxruntime is the oracle before.
    check(op, {"x": x}, {} if axis is None else {"axis": axis}, opset=opset,
          oracle="onnxruntime" if opset < 13 else "reference")


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_softmax_keeps_the_dtype(op, dtype):
    check(op, {"x": rand((3, 7), dtype)}, opset=13, rtol=2e-3 if dtype == np.float16 else None)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_axis_out_of_range_names_the_node(op):
    bad = from_onnx(one_node(op, {"x": rand((3,))}, {"axis": 0}, opset=13), ConvertOptions(exact=True))
    bad.nodes[0].attrs["axis"] = 3  # a hand-made (or hostile) .dcm: onnx's checker never sees it
    with pytest.raises(ExecutionError, match=rf"{op}_0.*axis 3 is out of bounds"):
        InferenceSession(bad).run(None, {"x": rand((3,))})


def test_gelu_unknown_approximation_is_refused_at_load():
    model = from_onnx(one_node("Gelu", {"x": rand((3,))}, opset=20), ConvertOptions(exact=True))
    model.nodes[0].attrs["approximate"] = "erf"
    with pytest.raises(UnsupportedOpError, match="Gelu_0.*approximate"):
        InferenceSession(model)


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("opset", [11, 13])
def test_hardmax_first_maximum_along_the_axis(axis, opset):
    x = rand((2, 3, 4), low=0, high=2).round()  # ties: the first maximum wins
    check("Hardmax", {"x": x}, {} if axis is None else {"axis": axis}, opset=opset,
          oracle="onnxruntime" if opset < 13 else "reference")


@pytest.mark.parametrize("attrs", [{}, {"lambd": 1.5, "bias": 1.5}, {"lambd": 0.2, "bias": -0.3}])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int32, np.int8])
def test_shrink(attrs, dtype):
    check("Shrink", {"x": rand((3, 5), dtype, low=-4, high=4)}, attrs, opset=9)


def test_clip_bound_with_several_values_is_refused():
    feeds = {"x": rand((3,)), "lo": rand((2,), seed=1)}
    model = one_node("Clip", feeds, opset=13)
    model.graph.output[0].type.tensor_type.elem_type = 1
    with pytest.raises(ExecutionError, match="Clip_0.*bounds must be scalars"):
        InferenceSession(from_onnx(model, ConvertOptions(exact=True))).run(None, feeds)


def test_float16_log_softmax_is_onnxruntimes_to_the_bit():
    """float16 LogSoftmax is computed in float32 and rounded once: the same values as onnxruntime, and
    closer to the exact result than onnx's reference (log of a float16 Softmax)."""
    x = rand((16, 24), np.float16, low=-4, high=4)
    got = check("LogSoftmax", {"x": x}, opset=13, oracle="onnxruntime", rtol=0)[0]
    shifted = x.astype(np.float64) - x.astype(np.float64).max(-1, keepdims=True)
    exact = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    _, reference = run_both(one_node("LogSoftmax", {"x": x}, opset=13), {"x": x})
    assert np.abs(got - exact).max() <= np.abs(reference[0] - exact).max()


def test_float16_softmax_rounds_each_step_as_the_reference():
    """float16 Softmax follows onnx's reference step by step, the values its backend cases expect."""
    x = rand((16, 24), np.float16, low=-4, high=4)
    got, reference = run_both(one_node("Softmax", {"x": x}, opset=13), {"x": x})
    np.testing.assert_array_equal(got[0], reference[0])
