"""InferenceSession's graph-level work: Relu folded into the Conv or Gemm before it, and only where
nothing else can see the value in between."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dcm.converters import ConvertOptions, from_onnx  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from dcm.runtime.cpu import winograd  # noqa: E402


def _graph(nodes, inits, outputs=("y",), x_shape=(2, 3, 6, 6)):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "b": rng.standard_normal(4).astype(np.float32),
            "fw": rng.standard_normal((5, 36)).astype(np.float32), "fb": rng.standard_normal(5).astype(np.float32)}


def _conv_relu_pool_fc_relu(x_shape=(2, 3, 6, 6)):
    return _graph([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
                   helper.make_node("Relu", ["c"], ["r"], name="relu1"),
                   helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
                   helper.make_node("Flatten", ["p"], ["f"]),
                   helper.make_node("Gemm", ["f", "fw", "fb"], ["g"], transB=1, name="fc"),
                   helper.make_node("Relu", ["g"], ["y"], name="relu2")], _weights(), x_shape=x_shape)


def _check(m, x, **session):
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)), **session)
    got = sess.run(None, {"x": x})
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    return sess


@pytest.mark.parametrize("kernels", ["sparse", "dense"])
@pytest.mark.parametrize("batch", [1, 3])
def test_relu_folds_into_conv_and_gemm(kernels, batch):
    x = np.random.default_rng(batch).standard_normal((batch, 3, 6, 6)).astype(np.float32)
    m = _conv_relu_pool_fc_relu()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "n"
    sess = _check(m, x, kernels=kernels)
    d = {n["name"]: n for n in sess.describe()}
    assert d["relu1"]["fused_into"] == "conv" and d["conv"]["fused"] == "Relu"
    assert d["relu2"]["fused_into"] == "fc" and d["fc"]["fused"] == "Relu"
    seconds = {n["name"]: n["seconds"] for n in sess.profile({"x": x}, runs=2)}
    assert seconds["relu1"] == 0 and seconds["relu2"] == 0 and seconds["conv"] > 0


@pytest.mark.parametrize("band_tiles", [512, 3])
def test_relu_folds_into_winograd(monkeypatch, band_tiles):
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    monkeypatch.setattr(winograd, "BAND_TILES", band_tiles)  # one band, or one tile row per band
    x = np.random.default_rng(5).standard_normal((2, 3, 9, 5)).astype(np.float32)
    m = _graph([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
                helper.make_node("Relu", ["c"], ["y"])], _weights(), x_shape=x.shape)
    sess = _check(m, x, kernels="dense")
    assert sess.describe()[0] == {**sess.describe()[0], "kernel": "winograd", "fused": "Relu"}
    assert (sess.run(None, {"x": x})[0] >= 0).all()


def test_no_fold_where_the_value_is_seen_elsewhere():
    x = np.random.default_rng(7).standard_normal((2, 3, 6, 6)).astype(np.float32)
    w = _weights()
    # The conv output is also a model output; the Gemm output also feeds an Add.
    m = _graph([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
                helper.make_node("Relu", ["c"], ["r"]),
                helper.make_node("Flatten", ["x"], ["f"]),
                helper.make_node("Gemm", ["f", "fw2", "fb"], ["g"], transB=1),
                helper.make_node("Relu", ["g"], ["gr"]),
                helper.make_node("Add", ["g", "gr"], ["y"])],
               {**w, "fw2": np.random.default_rng(1).standard_normal((5, 108)).astype(np.float32)},
               outputs=("c", "r", "y"))
    sess = _check(m, x)
    assert not any("fused" in n or "fused_into" in n for n in sess.describe())
    assert (sess.run(["c"], {"x": x})[0] < 0).any()  # the conv output is returned before the Relu


def test_absent_optional_inputs_are_not_freed():
    """An absent optional input ("") is no stored value: the plan must not try to free it (the fuzzer
    found a KeyError here)."""
    hi = {"hi": np.array(0.5, np.float32)}
    m = _graph([helper.make_node("Clip", ["x", "", "hi"], ["c"]), helper.make_node("Relu", ["c"], ["y"])], hi)
    x = np.random.default_rng(3).standard_normal((2, 3, 6, 6)).astype(np.float32)
    _check(m, x)


@pytest.mark.parametrize("threads", [1, 2])
def test_quiet_sessions_skip_errstate_and_stay_silent_on_inf_and_nan(monkeypatch, threads):
    """A session of compiled kernels runs without np.errstate: no numpy warning may escape on Inf,
    NaN or overflowing inputs (warnings are errors here), and the results still match onnxruntime."""
    import warnings

    from dcm.runtime.cpu import conv, matmul, native

    if native.SparseMatrix is None:
        pytest.skip("built without the native kernels")
    monkeypatch.setattr(matmul, "PARALLEL_MIN_NNZ", 0)
    x = np.random.default_rng(5).standard_normal((2, 3, 6, 6)).astype(np.float32)
    x[0, 0, 1, 1], x[0, 1, 2, 3], x[1, 2, 4, 4] = np.inf, -np.inf, np.nan
    x[1, 0] = 3e38  # sums overflow to inf
    for rows in (x, x[1:]):  # batch 2: the batched product; batch 1: the matvec (column partial sums)
        m = _conv_relu_pool_fc_relu(rows.shape)
        want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": rows})
        sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)), threads=threads, kernels="sparse")
        assert sess._quiet
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = sess.run(None, {"x": rows})
        np.testing.assert_array_equal(np.isnan(got[0]), np.isnan(want[0]))
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    softmax = _graph([helper.make_node("Softmax", ["x"], ["y"])], {})
    assert not InferenceSession(from_onnx(softmax, ConvertOptions(exact=True)))._quiet
