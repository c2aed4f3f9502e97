"""Every CPU kernel against onnxruntime running the same dense ONNX node."""
import contextlib

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dcm.converters import ConvertOptions, from_onnx  # noqa: E402
from dcm.errors import DcmError, InputError, UnsupportedOpError  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from dcm.runtime.cpu import native  # noqa: E402


@contextlib.contextmanager
def _native(on: bool):
    """Sessions made inside use the compiled kernels only if ``on`` (they are picked at load)."""
    saved = {name: getattr(native, name) for name in native.NAMES}
    if not on:
        for name in native.NAMES:
            setattr(native, name, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(native, name, value)


def _model(op, x_shape, inits=(), attrs=None, extra_inputs=(), opset=17, out_rank=None):
    rng = np.random.default_rng(0)
    names = ["x"] + [f"c{i}" for i in range(len(inits))] + list(extra_inputs)
    initializers = [numpy_helper.from_array(np.asarray(v), f"c{i}") for i, v in enumerate(inits)]
    node = helper.make_node(op, names, ["y"], **(attrs or {}))
    g = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m, rng.standard_normal(x_shape).astype(np.float32)


def _devices():
    """The CPU backend always; the GPU backend's torch kernels on the CPU where torch is installed,
    and on CUDA where a GPU is present."""
    out = ["cpu"]
    try:
        import torch
    except ImportError:
        return out
    out.append("torch-cpu")
    if torch.cuda.is_available():
        out.append("cuda")
    return out


DEVICES = _devices()


def _compare(m, x, modes=("sparse", "dense"), rtol=1e-5):
    """Every mode on every device; "sparse" on the CPU also without the compiled kernels (numpy and
    scipy instead of ``_native.c``)."""
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    model = from_onnx(m, ConvertOptions(exact=True, min_coded_elements=1))
    runs = [(mo, d, True) for mo in modes for d in DEVICES]
    runs += [("sparse", "cpu", False)] if "sparse" in modes and native.SparseMatrix is not None else []
    for mode, device, compiled in runs:
        x_copy = x.copy()
        with _native(compiled):
            got = InferenceSession(model, device, kernels=mode, threads=2).run(None, {"x": x_copy})[0]
        assert np.array_equal(x_copy, x, equal_nan=True), "the runtime wrote into the caller's input"
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=1e-5 * max(1.0, float(np.abs(ref).max())))


def _sparse(shape, density=0.3, seed=1):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    return w * (rng.random(shape) < density)


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("trans_a,trans_b,alpha,beta", [(0, 1, 1.0, 1.0), (0, 0, 0.5, 2.0), (1, 1, 1.0, 0.0)])
def test_gemm(batch, trans_a, trans_b, alpha, beta):
    w = _sparse((7, 9) if trans_b else (9, 7))
    x_shape = [9, batch] if trans_a else [batch, 9]
    m, x = _model("Gemm", x_shape, [w, np.arange(7, dtype=np.float32)],
                  {"transA": trans_a, "transB": trans_b, "alpha": alpha, "beta": beta})
    _compare(m, x)


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("c_shape", [(5, 7), (5, 1), (1, 7), (7,), (1,), ()])
def test_gemm_c_broadcast(batch, c_shape):
    """C broadcasts onto Y [rows, out] one way (ONNX Gemm): rows of C are added by numpy, a single
    row or value goes to the bias path; a C whose rows do not match the batch is a DcmError."""
    c = np.linspace(-1, 1, int(np.prod(c_shape))).astype(np.float32).reshape(c_shape)
    m, x = _model("Gemm", [batch, 9], [_sparse((7, 9)), c], {"transB": 1, "beta": 0.5})
    if c_shape[:1] == (5,) and batch != 5:
        with pytest.raises(DcmError, match="Gemm"):
            InferenceSession(from_onnx(m, ConvertOptions(exact=True))).run(None, {"x": x})
        return
    _compare(m, x)


def test_gemm_c_wrong_width():
    m, _ = _model("Gemm", [2, 9], [_sparse((7, 9)), np.zeros((2, 3), np.float32)], {"transB": 1})
    with pytest.raises(DcmError, match="does not broadcast"):
        InferenceSession(from_onnx(m, ConvertOptions(exact=True)))


def test_matmul_nd():
    m, x = _model("MatMul", [2, 3, 9], [_sparse((9, 4))])
    _compare(m, x)


CONV_CASES = [
    dict(w=(4, 3, 3, 3), x=[1, 3, 8, 8], attrs={}),
    dict(w=(4, 3, 3, 3), x=[2, 3, 9, 7], attrs={"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    dict(w=(4, 3, 3, 3), x=[2, 3, 9, 7], attrs={"dilations": [2, 1], "pads": [0, 2, 1, 0]}),
    dict(w=(6, 1, 3, 3), x=[2, 6, 7, 7], attrs={"group": 6, "pads": [1, 1, 1, 1]}),  # depthwise
    dict(w=(4, 2, 1, 1), x=[1, 4, 5, 5], attrs={"group": 2}),
    dict(w=(4, 3, 2, 2), x=[1, 3, 3, 3], attrs={"pads": [3, 3, 3, 3]}),  # padding larger than the kernel
    dict(w=(4, 3, 3, 3), x=[2, 3, 7, 6], attrs={"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    dict(w=(4, 3, 2, 2), x=[2, 3, 7, 6], attrs={"auto_pad": "SAME_LOWER"}),
    dict(w=(4, 3, 3, 3), x=[2, 3, 7, 6], attrs={"auto_pad": "VALID"}),
    dict(w=(5, 3, 3), x=[2, 3, 11], attrs={"pads": [1, 2], "strides": [2]}),  # 1-D
    dict(w=(6, 4, 1, 1), x=[1, 4, 5, 7], attrs={}),  # pointwise: no im2col
    dict(w=(6, 4, 1, 1), x=[3, 4, 5, 7], attrs={"strides": [2, 2]}),
    dict(w=(6, 4, 1, 1), x=[2, 4, 5, 7], attrs={"pads": [1, 0, 0, 1]}),  # padded: the general path
    dict(w=(5, 3, 1), x=[2, 3, 9], attrs={}),  # 1-D pointwise
    dict(w=(5, 3, 3, 3), x=[2, 3, 9, 21], attrs={"strides": [2, 1], "dilations": [1, 2], "pads": [2, 1, 0, 3]}),
    dict(w=(8, 2, 5, 5), x=[1, 4, 12, 12], attrs={"group": 2}),  # LeNet-like, grouped
]


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_conv(case):
    c = CONV_CASES[case]
    m, x = _model("Conv", c["x"], [_sparse(c["w"], 0.5), np.linspace(-1, 1, c["w"][0]).astype(np.float32)], c["attrs"])
    _compare(m, x)


POOL_CASES = [
    ("MaxPool", [2, 3, 8, 8], {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("MaxPool", [1, 2, 7, 9], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("MaxPool", [1, 2, 7, 9], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ("MaxPool", [1, 2, 9], {"kernel_shape": [3], "strides": [2]}),
    ("AveragePool", [2, 3, 8, 8], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("AveragePool", [2, 3, 8, 8], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    ("AveragePool", [1, 2, 7, 7], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
    ("AveragePool", [2, 3, 6, 9], {"kernel_shape": [2, 3], "strides": [2, 3]}),  # windows tile the input
    ("MaxPool", [1, 2, 4, 6], {"kernel_shape": [1, 2], "strides": [1, 2]}),
    ("MaxPool", [2, 2, 9, 4], {"kernel_shape": [3, 1], "strides": [3, 1]}),
]


@pytest.mark.parametrize("case", range(len(POOL_CASES)))
def test_pool(case):
    op, shape, attrs = POOL_CASES[case]
    _compare(*_model(op, shape, (), attrs))


UNARY = [("Relu", {}), ("LeakyRelu", {"alpha": 0.2}), ("Sigmoid", {}), ("Tanh", {}),
         ("Softmax", {"axis": 1}), ("LogSoftmax", {}), ("GlobalAveragePool", {}), ("Flatten", {"axis": 2}),
         ("Transpose", {"perm": [0, 2, 3, 1]}), ("Identity", {}), ("LRN", {"size": 3, "alpha": 1e-3}),
         ("Dropout", {})]


@pytest.mark.parametrize("op,attrs", UNARY)
def test_unary(op, attrs):
    _compare(*_model(op, [2, 5, 4, 3], (), attrs))


@pytest.mark.parametrize("attrs", [{"size": 5}, {"size": 3, "alpha": 0.5, "beta": 0.5, "bias": 2.0},
                                   {"size": 9, "alpha": 0.1, "beta": 1.3}, {"size": 1, "beta": 0.75}])
def test_lrn(attrs):
    """AlexNet's LRN (size 5, beta 0.75), beta 0.5, a window wider than the 5 channels, a general beta
    (onnxruntime accepts odd sizes only)."""
    m, x = _model("LRN", [2, 5, 4, 3], (), attrs)
    _compare(m, 3 * x)  # large enough that the normalization matters


def test_lrn_even_size_follows_the_spec():
    """Channels c - floor((size-1)/2) .. c + ceil((size-1)/2), from the operator's text (onnx's own
    reference implementation loops over the batch axis instead, so it cannot serve here)."""
    m, x = _model("LRN", [2, 6, 3, 3], (), {"size": 4, "alpha": 0.5, "beta": 0.6})
    x = 3 * x
    sq = np.square(x.astype(np.float64))
    window = np.stack([sq[:, max(0, c - 1) : c + 3].sum(axis=1) for c in range(6)], axis=1)
    want = x / (1.0 + 0.5 / 4 * window) ** 0.6
    got = InferenceSession(from_onnx(m, ConvertOptions(exact=True))).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_relu_on_a_large_input_keeps_nan_and_inf():
    """Large arrays take np.clip's loop instead of np.maximum's (dcm.runtime.cpu.activation.relu)."""
    m, x = _model("Relu", [2, 8, 40, 40], ())
    x.reshape(-1)[:4] = [np.nan, np.inf, -np.inf, -0.0]
    _compare(m, x)
    got = InferenceSession(from_onnx(m)).run(None, {"x": x})[0].reshape(-1)
    assert np.isnan(got[0]) and got[1] == np.inf and got[2] == 0


def test_clip_bounds_as_inputs_attributes_or_absent():
    _compare(*_model("Clip", [2, 6], [np.float32(-0.5)]))  # min only
    _compare(*_model("Clip", [2, 6], [], {"min": -0.2, "max": 0.3}, opset=10))  # bounds as attributes
    _compare(*_model("Clip", [2, 6], []))  # no bounds: a copy


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0, 2.5, -0.5])
def test_leaky_relu_any_alpha(alpha):
    _compare(*_model("LeakyRelu", [2, 5, 3], (), {"alpha": alpha}))


def test_softmax_legacy_opset():
    _compare(*_model("Softmax", [2, 3, 4], (), {"axis": 1}, opset=11))


def test_clip_batchnorm_pad_reshape_concat_binary():
    _compare(*_model("Clip", [2, 6], [np.float32(-0.5), np.float32(0.7)]))
    c = 4
    rng = np.random.default_rng(2)
    _compare(*_model("BatchNormalization", [2, c, 3, 3], [rng.random(c).astype(np.float32), rng.random(c).astype(np.float32),
                                                          rng.random(c).astype(np.float32), rng.random(c).astype(np.float32) + 0.5]))
    _compare(*_model("Pad", [2, 3, 4], [np.array([0, 1, 2, 0, 2, 1], np.int64), np.float32(1.5)]))
    _compare(*_model("Pad", [2, 3, 4], [np.array([0, 1, 2, 0, 2, 1], np.int64)], {"mode": "reflect"}))
    _compare(*_model("Reshape", [2, 3, 4], [np.array([0, -1], np.int64)]))
    _compare(*_model("Concat", [2, 3], [np.ones((2, 2), np.float32)], {"axis": 1}))
    for op in ("Add", "Sub", "Mul", "Div"):
        _compare(*_model(op, [2, 3, 4], [np.linspace(1, 2, 4).astype(np.float32)]))


def test_input_validation():
    m, x = _model("Relu", [1, 3], ())
    sess = InferenceSession(from_onnx(m))
    with pytest.raises(InputError, match="missing input"):
        sess.run(None, {})
    with pytest.raises(InputError, match="dtype"):
        sess.run(None, {"x": x.astype(np.float64)})
    with pytest.raises(InputError, match="axis 1"):
        sess.run(None, {"x": np.ones((1, 4), np.float32)})
    with pytest.raises(InputError, match="unknown input"):
        sess.run(None, {"x": x, "z": x})


def test_nan_propagates():
    m, x = _model("Relu", [1, 3], ())
    x[0, 1] = np.nan
    out = InferenceSession(from_onnx(m)).run(None, {"x": x})[0]
    assert np.isnan(out[0, 1])


def test_unsupported_op_reported_at_load():
    m, _ = _model("Relu", [1, 3], ())
    model = from_onnx(m)
    model.nodes[0].op = "GridSample"
    with pytest.raises(UnsupportedOpError, match="GridSample"):
        InferenceSession(model)


def test_kernel_choice_follows_density_and_batch():
    m, x = _model("Gemm", [1, 200], [_sparse((300, 200), 0.05)], {"transB": 1})
    model = from_onnx(m, ConvertOptions(exact=True))
    assert InferenceSession(model).describe()[0]["kernel"] == "sparse"
    dense = from_onnx(_model("Gemm", [1, 200], [_sparse((300, 200), 0.9)], {"transB": 1})[0], ConvertOptions(exact=True))
    assert InferenceSession(dense).describe()[0]["kernel"] == "dense"
    assert InferenceSession(model, kernels={"Gemm_0": "dense"}).describe()[0]["kernel"] == "dense"
    mid = from_onnx(_model("Gemm", [1, 200], [_sparse((300, 200), 0.2)], {"transB": 1})[0], ConvertOptions(exact=True))
    compiled = native.SparseMatrix is not None  # its batched product beats BLAS up to 30% at any batch
    assert InferenceSession(mid, batch_hint=64).describe()[0]["kernel"] == ("sparse" if compiled else "dense")
    if compiled:  # the CSC copy for batch-1 products is kept only for small batch hints
        assert InferenceSession(mid)._kernels[0].mm.native.forms == (True, True)
        assert InferenceSession(mid, batch_hint=64)._kernels[0].mm.native.forms == (True, False)


def test_gpu_backend_without_a_gpu_is_a_clear_error():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from dcm.errors import DcmError

    with pytest.raises(DcmError, match="no CUDA GPU"):
        InferenceSession(from_onnx(_model("Relu", [1, 3], ())[0]), "cuda")
