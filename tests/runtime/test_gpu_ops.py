"""The GPU backend (torch kernels, run on the CPU under device="torch-cpu") against onnx's backend
node cases: every case the CPU backend passes must pass on it too. The cases, skip rules and the
comparison are ``benchmarks/onnx_node_suite.py``'s (``run_case(case, device="torch-cpu")``)."""
import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("torch")

from benchmarks.onnx_node_suite import all_cases, data_cases, main_op, run_case, skip_reason  # noqa: E402
from dcm.converters.onnx_in import ConvertOptions, from_onnx  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from tests.runtime.opcheck import one_node  # noqa: E402

CASES = {case.name: case for case in all_cases()}
# onnx's model test files but the light CNNs: their constant weights drive the logits up to 1e19, where
# torch's other order of summation (within float32's precision) moves the last Softmax.
DATA_CASES = {case.name: case for case in data_cases() if not case.name.startswith("light/")}


@pytest.mark.parametrize("name", list(CASES))
def test_backend_node_case_on_gpu_backend(name: str) -> None:
    case = CASES[name]
    reason = skip_reason(case)
    if reason is not None:
        pytest.skip(f"{main_op(case)}: {reason}")
    try:
        run_case(case, device="torch-cpu")
    except Exception as failure:  # noqa: BLE001  judged against the CPU backend
        try:
            run_case(case)
        except Exception as cpu_failure:  # noqa: BLE001
            pytest.skip(f"the CPU backend fails this case too: {str(cpu_failure).splitlines()[0][:120]}")
        raise failure


@pytest.mark.parametrize("name", list(DATA_CASES))
def test_model_test_file_on_gpu_backend(name: str) -> None:
    case = DATA_CASES[name]
    reason = skip_reason(case)
    if reason is not None:
        pytest.skip(reason)
    run_case(case, device="torch-cpu")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rms_normalization_matches_the_cpu(dtype) -> None:
    """RMSNormalization (opset 23) on torch, over the last two axes, against the CPU kernel."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4)).astype(dtype)
    model = from_onnx(one_node("RMSNormalization", {"x": x}, {"axis": 1}, opset=23,
                               consts={"s": rng.standard_normal((3, 4)).astype(dtype)}), ConvertOptions(exact=True))
    want = InferenceSession(model).run(None, {"x": x})[0]
    got = InferenceSession(model, device="torch-cpu").run(None, {"x": x})[0]
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_batch_norm_leaves_the_activation_after_it_to_its_own_kernel() -> None:
    """The CPU BatchNormalization applies a Relu after it itself; the torch one does not, so the Relu
    stays a step of its own there (it was dropped when the torch kernel inherited the CPU's fusion)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    values = {"s": rng.random(4), "t": rng.standard_normal(4), "m": rng.standard_normal(4), "v": rng.random(4) + 0.5}
    stats = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in values.items()]
    nodes = [helper.make_node("Add", ["x", "x"], ["d"]),
             helper.make_node("BatchNormalization", ["d", *values], ["e"]), helper.make_node("Relu", ["e"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], stats)
    model = from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), ConvertOptions(exact=True))
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    want = InferenceSession(model).run(None, {"x": x})[0]
    assert want.min() == 0.0  # the Relu ran on the CPU
    np.testing.assert_allclose(InferenceSession(model, device="torch-cpu").run(None, {"x": x})[0], want, rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
@pytest.mark.parametrize("op", ["Conv", "Gemm", "MatMul", "BatchNormalization"])
def test_weight_layers_keep_the_input_type(op: str, dtype) -> None:
    """The weights are float32 on the device; a float16 or float64 input is computed in float32 and
    its result has the input's type, as ONNX types these ops."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 5, 5) if op in ("Conv", "BatchNormalization") else (2, 6)).astype(dtype)
    consts = {"Conv": {"w": rng.standard_normal((3, 2, 3, 3))}, "Gemm": {"w": rng.standard_normal((6, 4))},
              "MatMul": {"w": rng.standard_normal((6, 4))},
              "BatchNormalization": {"s": rng.random(2), "b": np.ones(2), "m": np.zeros(2), "v": np.ones(2)}}[op]
    model = from_onnx(one_node(op, {"x": x}, opset=17, consts={k: v.astype(dtype) for k, v in consts.items()}),
                      ConvertOptions(exact=True))
    got = InferenceSession(model, device="torch-cpu").run(None, {"x": x})[0]
    want = InferenceSession(model).run(None, {"x": x})[0]
    assert got.dtype == dtype
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("op, attrs, consts", [
    ("Conv", {"pads": [1, 0, 1, 1, 0, 1], "strides": [2, 1, 1]}, {"w": (3, 2, 2, 3, 2), "b": (3,)}),
    ("Conv", {"group": 2, "dilations": [1, 2, 1]}, {"w": (4, 1, 2, 2, 2)}),
    ("ConvTranspose", {"strides": [2, 1, 2], "output_padding": [1, 0, 0]}, {"w": (2, 3, 2, 2, 3)}),
    ("MaxPool", {"kernel_shape": [2, 2, 3], "strides": [2, 1, 2], "pads": [1, 0, 0, 0, 1, 1]}, {}),
    ("AveragePool", {"kernel_shape": [2, 3, 3], "strides": [2, 1, 2], "pads": [1, 0, 1, 0, 1, 1],
                     "count_include_pad": 1}, {}),
    ("AveragePool", {"kernel_shape": [3, 3, 3], "strides": [2, 2, 2], "ceil_mode": 1}, {}),
])
def test_3d_windows_run_as_torch_kernels(op: str, attrs: dict, consts: dict) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 5, 6, 7)).astype(np.float32)
    model = from_onnx(one_node(op, {"x": x}, attrs, opset=19,
                               consts={k: rng.standard_normal(s).astype(np.float32) for k, s in consts.items()}))
    gpu = InferenceSession(model, device="torch-cpu")
    assert "backend" not in gpu.describe()[0]
    want = InferenceSession(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(gpu.run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_integer_products_of_run_time_values(op: str, dtype) -> None:
    """CUDA has no integer matmul: these run on the host, exactly (int64 past 2^53 included)."""
    a = np.array([[1 << 40, 3], [-2, 5]], dtype) if dtype == np.int64 else np.array([[7, 3], [-2, 5]], dtype)
    b = np.array([[3, 1], [2, -4]], dtype)
    model = from_onnx(one_node(op, {"a": a, "b": b}, opset=13), ConvertOptions(exact=True))
    want = InferenceSession(model).run(None, {"a": a, "b": b})[0]
    got = InferenceSession(model, device="torch-cpu").run(None, {"a": a, "b": b})[0]
    assert got.dtype == dtype and np.array_equal(got, want) and np.array_equal(got, a @ b)


@pytest.mark.parametrize("axes", [None, [], [1]], ids=["no-axes-input", "empty-axes", "axis-1"])
@pytest.mark.parametrize("op", ["ReduceLogSum", "ReduceL2", "ReduceSumSquare", "ReduceL1", "ReduceLogSumExp"])
def test_reductions_with_noop_with_empty_axes(op: str, axes) -> None:
    """noop_with_empty_axes and no axes: no reduction, but the per-value step still applies (log x,
    |x|, x^2), as the CPU kernel (and onnx's reference) computes it."""
    x = np.random.default_rng(0).random((2, 3)).astype(np.float32) + 0.5
    consts = {} if axes is None else {"axes": np.array(axes, np.int64)}
    model = from_onnx(one_node(op, {"x": x}, {"noop_with_empty_axes": 1}, opset=18, consts=consts),
                      ConvertOptions(exact=True))
    want = InferenceSession(model).run(None, {"x": x})[0]
    got = InferenceSession(model, device="torch-cpu").run(None, {"x": x})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6)


EXTREMES = np.array([-1e30, -100, -1, -0.0, 0, 0.5, 1, 100, 1e30, np.inf, -np.inf, np.nan], np.float32)


@pytest.mark.parametrize("op, attrs, opset", [
    ("Gelu", {}, 20), ("Gelu", {"approximate": "tanh"}, 20), ("Softplus", {}, 17), ("Mish", {}, 18),
    ("Elu", {}, 17), ("Selu", {}, 17), ("Celu", {}, 17), ("Swish", {}, 24), ("HardSwish", {}, 17),
    ("HardSigmoid", {}, 17), ("Softsign", {}, 17), ("Sqrt", {}, 17), ("Erf", {}, 17)])
def test_activations_on_extremes_match_the_cpu(op: str, attrs: dict, opset: int) -> None:
    """Infinities, NaN and huge values give what the CPU kernels give (no NaN from a discarded branch)."""
    model = from_onnx(one_node(op, {"x": EXTREMES}, attrs, opset=opset), ConvertOptions(exact=True))
    want = InferenceSession(model).run(None, {"x": EXTREMES})[0]
    got = InferenceSession(model, device="torch-cpu").run(None, {"x": EXTREMES})[0]
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7, equal_nan=True)


@pytest.mark.parametrize("exponent", [0.5, 2.0, 3.0, 1.5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_pow_on_extremes_matches_the_cpu(exponent: float, dtype) -> None:
    a = np.resize(EXTREMES.astype(dtype), (3, 12))
    b = np.full((1, 1, 1), exponent, dtype)  # the result grows a dimension
    model = from_onnx(one_node("Pow", {"a": a, "b": b}, opset=15), ConvertOptions(exact=True))
    want = InferenceSession(model).run(None, {"a": a, "b": b})[0]
    got = InferenceSession(model, device="torch-cpu").run(None, {"a": a, "b": b})[0]
    assert got.shape == want.shape == (1, 3, 12)
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=2e-3, equal_nan=True)


@pytest.mark.parametrize("shape", [(3, 2, 3), (3, 2, 3, 3), (4, 1, 2, 2, 2)], ids=["1d", "2d", "3d-grouped"])
def test_conv_with_a_weight_fed_at_run_time(shape) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, *[6] * (len(shape) - 2))).astype(np.float32)
    w, b = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape[0]).astype(np.float32)
    feeds = {"x": x, "w": w, "b": b}
    model = from_onnx(one_node("Conv", feeds, {"group": 2 // shape[1], "pads": [1] * 2 * (len(shape) - 2)}, opset=17),
                      ConvertOptions(exact=True))
    want = InferenceSession(model).run(None, feeds)[0]
    got = InferenceSession(model, device="torch-cpu").run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
