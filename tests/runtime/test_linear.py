"""dcm/runtime/cpu/linear.py (and dcm.MatMulAdd in fused.py): a fully connected layer keeps, per input
shape, the one packed GEMM call a call came to, and calls it straight away after; the bits are the
first call's, and what the kept call refuses runs the full path."""
import numpy as np
import pytest

pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dcm.converters import ConvertOptions, from_onnx  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from dcm.runtime.cpu import native  # noqa: E402
from dcm.runtime.cpu.linear import Gemm, MatMul  # noqa: E402

pytestmark = pytest.mark.skipif(native.gemm_packed is None or native.packed_simd() != "avx512",
                                reason="the linear layers take the packed GEMM on AVX-512")
RNG = np.random.default_rng(3)


def _layers(threads: int):
    """x [N, 6, 24] -> MatMul+Add+Relu (dcm.MatMulAdd with its ReLU) -> MatMul [24, 40] (plain) ->
    Reshape to [N * 6, 40] -> Gemm (transB) + Relu."""
    w1, b1 = RNG.standard_normal((24, 24)).astype(np.float32), RNG.standard_normal(24).astype(np.float32)
    w2 = RNG.standard_normal((24, 40)).astype(np.float32)
    w3, b3 = RNG.standard_normal((16, 40)).astype(np.float32), RNG.standard_normal(16).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"]), helper.make_node("Add", ["m1", "b1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r1"]), helper.make_node("MatMul", ["r1", "w2"], ["m2"]),
             helper.make_node("Reshape", ["m2", "shape"], ["f"]),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["g"], transB=1), helper.make_node("Relu", ["g"], ["y"])]
    inits = [numpy_helper.from_array(v, n) for n, v in
             (("w1", w1), ("b1", b1), ("w2", w2), ("w3", w3), ("b3", b3), ("shape", np.array([-1, 40], np.int64)))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6, 24])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)), threads=threads)
    want = lambda x: np.maximum(np.maximum(x @ w1 + b1, 0) @ w2 @ w3.T + b3, 0).reshape(-1, 16)  # noqa: E731
    return sess, want


@pytest.mark.parametrize("threads", [1, 2])
def test_kept_calls_give_the_first_calls_bits(threads):
    sess, want = _layers(threads)
    x = RNG.standard_normal((3, 6, 24)).astype(np.float32)
    (first,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(first, want(x), rtol=1e-4, atol=1e-4)
    layers = [k for k in sess._kernels if isinstance(k, (Gemm, MatMul))]
    assert len(layers) == 3 and all(k._plans for k in layers)  # MatMulAdd, MatMul, Gemm each keep one
    for _ in range(2):
        np.testing.assert_array_equal(sess.run(None, {"x": x})[0], first)
    one = x[:1]  # a new shape: a plan of its own (a single row too: Gemm's [6, 40] is still 6 rows)
    np.testing.assert_allclose(sess.run(None, {"x": one})[0], want(one), rtol=1e-4, atol=1e-4)
    assert all(len(k._plans) == 2 for k in layers)


def test_a_refused_argument_takes_the_full_path():
    """A float64 a, or a strided view of a planned shape: the packed kernel refuses it, the layer runs in
    full (numpy's product for float64, a copy for the view) and drops its plans."""
    sess, _ = _layers(1)
    x = RNG.standard_normal((2, 6, 24)).astype(np.float32)
    sess.run(None, {"x": x})
    (gemm,) = [k for k in sess._kernels if type(k) is Gemm]
    a = RNG.standard_normal((12, 40)).astype(np.float32)
    (y,) = gemm(a)
    np.testing.assert_array_equal(gemm(a)[0], y)
    np.testing.assert_allclose(gemm(a.astype(np.float64))[0], y, rtol=1e-5, atol=1e-5)
    assert not gemm._plans
    gemm(a)
    wide = np.zeros((12, 80), np.float32)
    wide[:, ::2] = a
    np.testing.assert_array_equal(gemm(wide[:, ::2])[0], y)
