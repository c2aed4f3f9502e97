"""The compiled pointwise kernels (dcm/runtime/cpu/_pointwise.c) against float64 references, on the
AVX2 paths and the portable C ones, and the kernels that call them against their numpy paths."""
import math
import os
from unittest import mock

import numpy as np
import pytest
import scipy.special

from dcm.runtime import InferenceSession
from dcm.runtime.cpu import native
from tests.runtime.switches import switched

if native.activate is None:
    if os.environ.get("DCM_ALLOW_NO_NATIVE") == "1":
        pytest.skip("built without the compiled kernels (DCM_ALLOW_NO_NATIVE=1)", allow_module_level=True)
    pytest.fail("dcm.runtime.cpu._pointwise was not built (no C compiler at install?)", pytrace=False)


@pytest.fixture(params=["avx512", "avx2", "portable"])
def simd(request):
    """The AVX-512 paths (softmax, layer_norm), the AVX2 ones (where the CPU has them) or the portable C ones."""
    with switched(native.set_pointwise_simd, request.param != "portable"):
        with switched(native.set_pointwise_avx512, request.param == "avx512"):
            yield request.param != "portable"


def _values(n=20011, scale=4.0, seed=0):
    """Normal values, a few far out, and the special ones (an odd count: the last vector is partial)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * scale).astype(np.float32)
    x[:9] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 200.0, -200.0]
    return x


def _sigmoid(x):
    return scipy.special.expit(x)


# name, (alpha, beta), float64 reference, max absolute error, max relative error where |ref| > 1e-3.
# Gelu's relative error grows where 1 + erf(x / sqrt 2) cancels (x < -3): its absolute error stays under 2e-6.
CASES = {
    "none": ((0, 0), lambda x: x, 0, 0),
    "relu": ((0, 0), lambda x: np.maximum(x, 0), 0, 0),
    "clip": ((-1.5, 6), lambda x: np.clip(x, -1.5, 6), 0, 0),
    "hardsigmoid": ((0.2, 0.5), lambda x: np.clip(np.float32(0.2) * x + np.float32(0.5), 0, 1), 1e-7, 1e-4),
    "hardswish": ((0, 0), lambda x: x * np.clip(x / 6 + 0.5, 0, 1), 1e-6, 1e-4),
    "leakyrelu": ((0.01, 0), lambda x: np.where(x >= 0, x, np.float32(0.01) * x), 1e-7, 1e-6),
    "sigmoid": ((0, 0), _sigmoid, 2e-7, 4e-7),
    "silu": ((1, 0), lambda x: x * _sigmoid(x), 3e-6, 5e-7),
    "gelu": ((0, 0), lambda x: 0.5 * x * scipy.special.erfc(-x / math.sqrt(2)), 2e-6, 1e-3),
    "gelu_tanh": ((0, 0), lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
                  2e-6, 3e-6),
    "erf": ((0, 0), scipy.special.erf, 6e-7, 6e-7),
}


@pytest.mark.parametrize("act", CASES)
def test_activation_matches_float64(simd, act):
    (alpha, beta), ref, max_abs, max_rel = CASES[act]
    x = _values()
    y = np.empty_like(x)
    native.activate(x, y, act, alpha, beta)
    with np.errstate(all="ignore"):
        want = ref(x.astype(np.float64))
    assert np.array_equal(np.isnan(y), np.isnan(want)), "NaN where the reference has none, or the reverse"
    finite = np.isfinite(want)
    assert np.array_equal(y[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)])  # +-inf kept
    err = np.abs(y[finite] - want[finite])
    assert err.max() <= max_abs
    big = np.abs(want[finite]) > 1e-3
    assert (err[big] / np.abs(want[finite][big])).max() <= max(max_rel, 1e-7)


def test_portable_and_avx2_paths_agree():
    x = _values()
    out = {}
    for allowed in (True, False):
        with switched(native.set_pointwise_simd, allowed):
            out[allowed] = {}
            for act, ((alpha, beta), *_) in CASES.items():
                y = np.empty_like(x)
                native.activate(x, y, act, alpha, beta)
                out[allowed][act] = y
    for act, (_, _, max_abs, _) in CASES.items():  # the same polynomials (FMA rounds once where C rounds twice)
        np.testing.assert_allclose(out[True][act], out[False][act], rtol=3e-6, atol=max_abs, err_msg=act)


@pytest.mark.parametrize("act", ["none", "relu", "clip"])
def test_clamps_give_the_same_bits_on_every_path(act):
    """None, Relu and Clip (16 lanes on AVX-512, 8 on AVX2, scalar) give the same bits, -0 and NaN
    included, through a per-channel scale and bias (BatchNormalization's form, 7x7 planes)."""
    x = _values(49 * 6).reshape(1, 6, 7, 7)
    scale, bias = np.linspace(-2, 2, 6, dtype=np.float32), np.linspace(-1, 1, 6, dtype=np.float32)
    (alpha, beta), *_ = CASES[act]
    out = []
    for simd_on, wide in ((True, True), (True, False), (False, False)):
        with switched(native.set_pointwise_simd, simd_on), switched(native.set_pointwise_avx512, wide):
            y = np.empty_like(x)
            native.activate(x, y, act, alpha, beta, bias=bias, scale=scale, plane=49)
            out.append(y.view(np.uint32))
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[2])


@pytest.mark.parametrize("act", ["none", "relu", "gelu", "silu"])
@pytest.mark.parametrize("layout", ["columns", "channels"])
@pytest.mark.parametrize("residual", [False, True])
def test_bias_and_residual(simd, act, layout, residual):
    """y = act(x + bias + residual): the bias per column of [rows, cols], or per channel of NCHW planes."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, 7, 11)).astype(np.float32)
    r = rng.standard_normal(x.shape).astype(np.float32) if residual else None
    if layout == "columns":
        bias, plane, b = rng.standard_normal(11).astype(np.float32), 1, None
        b = bias
    else:
        bias, plane = rng.standard_normal(5).astype(np.float32), 77
        b = bias.reshape(1, 5, 1, 1)
    (alpha, beta), ref, max_abs, _ = CASES[act]
    want = ref(x.astype(np.float64) + (0 if r is None else r) + b)
    y = x.copy()
    native.activate(y, y, act, alpha, beta, bias=bias, plane=plane, residual=r)  # in place, as producers call it
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=max_abs + 1e-6)
    if act == "none":  # the bias first, then the residual: the unfused graph's float32 sums exactly
        np.testing.assert_array_equal(y, x + b + (0 if r is None else r))


@pytest.mark.parametrize("act", ["none", "relu", "silu"])
@pytest.mark.parametrize("layout", ["columns", "channels"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_scale_bias_and_residual(simd, act, layout, with_bias):
    """y = act(x * scale + bias + residual) (BatchNormalization's form), scale and bias per column or per
    channel of NCHW planes, with or without a bias."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5, 7, 11)).astype(np.float32)
    r = rng.standard_normal(x.shape).astype(np.float32)
    count, plane, shape = (11, 1, (11,)) if layout == "columns" else (5, 77, (1, 5, 1, 1))
    scale, bias = (rng.standard_normal(count).astype(np.float32) for _ in range(2))
    (alpha, beta), ref, max_abs, _ = CASES[act]
    want = ref(x.astype(np.float64) * scale.reshape(shape) + (bias.reshape(shape) if with_bias else 0) + r)
    y = np.empty_like(x)
    native.activate(x, y, act, alpha, beta, bias=bias if with_bias else None, plane=plane, residual=r, scale=scale)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=max_abs + 1e-6)


@pytest.mark.parametrize("cols", [1, 7, 8, 256, 1000])
def test_rms_norm_matches_float64(simd, cols):
    """rms=True: no mean subtracted, the mean of the squares as the variance (RMSNormalization)."""
    rng = np.random.default_rng(cols)
    x = (rng.standard_normal((13, cols)) * 3 + 1).astype(np.float32)
    scale = rng.standard_normal(cols).astype(np.float32)
    xd = x.astype(np.float64)
    want = xd / np.sqrt((xd * xd).mean(axis=1, keepdims=True) + 1e-6) * scale
    y, inv = np.empty_like(x), np.empty(13, np.float32)
    native.layer_norm(x, y, cols, scale, None, 1e-6, None, inv, rms=True)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * np.abs(scale).max())
    np.testing.assert_allclose(inv, 1 / np.sqrt((xd * xd).mean(axis=1) + 1e-6), rtol=1e-6)


@pytest.mark.parametrize("cols", [1, 7, 8, 192, 256, 1000, 10000])
def test_layer_norm_matches_float64(simd, cols):
    rng = np.random.default_rng(cols)
    x = (rng.standard_normal((13, cols)) * 3 + 5).astype(np.float32)
    scale, bias = (rng.standard_normal(cols).astype(np.float32) for _ in range(2))
    xd = x.astype(np.float64)
    mean, var = xd.mean(axis=1), xd.var(axis=1)
    inv = 1 / np.sqrt(var + 1e-5)
    want = (xd - mean[:, None]) * inv[:, None] * scale + bias
    y, m, s = np.empty_like(x), np.empty(13, np.float32), np.empty(13, np.float32)
    native.layer_norm(x, y, cols, scale, bias, 1e-5, m, s)
    # float32 statistics: the mean of values around 5 to 1e-6 relative, hence (x - mean) to a few 1e-6
    assert np.abs(y - want).max() <= 1e-5 * np.abs(scale).max() * max(1, np.abs((xd - mean[:, None]) * inv[:, None]).max())
    np.testing.assert_allclose(m, mean, rtol=2e-6)
    np.testing.assert_allclose(s, inv, rtol=2e-6)
    native.layer_norm(x, x, cols, scale)  # in place, no bias or statistics
    np.testing.assert_allclose(x, want - bias, rtol=1e-5, atol=1e-5 * np.abs(scale).max() * 4)


@pytest.mark.parametrize("cols", [1, 5, 128, 1001])
@pytest.mark.parametrize("log", [False, True])
def test_softmax_matches_float64(simd, cols, log):
    rng = np.random.default_rng(cols)
    x = (rng.standard_normal((9, cols)) * 10).astype(np.float32)
    x[0] += 1e4  # large values: the row's maximum is subtracted first, so nothing overflows
    x[1, 0] = -np.inf
    # float64 from the differences x - max rounded to float32, as the kernel (and numpy's float32
    # path) rounds them: that rounding alone is up to 4e-6 relative at x - max = -65
    with np.errstate(invalid="ignore"):
        d = (x - x.max(axis=1, keepdims=True)).astype(np.float64)
    want = scipy.special.log_softmax(d, axis=1) if log else scipy.special.softmax(d, axis=1)
    y = np.empty_like(x)
    native.softmax(x, y, cols, log)
    ok = np.isfinite(want)
    assert np.array_equal(y[~ok], want[~ok], equal_nan=True)  # a row of one -inf is NaN, as in numpy
    if log:
        np.testing.assert_allclose(y[ok], want[ok], rtol=2e-6, atol=2e-6)
    else:
        assert np.abs(y[ok] - want[ok]).max() <= 2e-7
        big = ok & (want > 1e-30)
        assert (np.abs(y - want)[big] / want[big]).max() <= 2e-6
    native.softmax(x, x, cols, log)
    np.testing.assert_array_equal(x, y)  # in place: the same values


@pytest.mark.parametrize("cols", [7, 197, 1024, 1025])
@pytest.mark.parametrize("log", [False, True])
def test_softmax_rows_together_match_one_at_a_time(simd, cols, log):
    """Short rows go 4 at a time on the AVX-512 path, their steps interleaved: each row keeps the bits
    of a call on that row alone (rows 0-3 and 4-7 together, row 8 alone; past 1024 values row by row)."""
    x = (np.random.default_rng(cols).standard_normal((9, cols)) * 10).astype(np.float32)
    x[5, 0] = -np.inf
    x[6] = -np.inf  # a row of -inf alone: NaN, whatever the rows beside it
    y = np.empty_like(x)
    native.softmax(x, y, cols, log)
    for r in range(9):
        one = np.empty((1, cols), np.float32)
        native.softmax(x[r : r + 1].copy(), one, cols, log)
        assert np.array_equal(y[r], one[0], equal_nan=True), r


def test_softmax_row_with_nan_is_nan(simd):
    x = np.array([[1, np.nan, 2], [1, 2, 3]], np.float32)
    native.softmax(x, x, 3)
    assert np.isnan(x[0]).all() and np.isfinite(x[1]).all()


def test_empty_arrays():
    e = np.empty((0, 4), np.float32)
    native.activate(e, e, "gelu", bias=np.ones(4, np.float32))
    native.layer_norm(e, e, 4, np.ones(4, np.float32))
    native.softmax(e, e, 4)


BAD_CALLS = {
    "unknown activation": (lambda x: native.activate(x, x, "swishy"), ValueError, "unknown activation"),
    "float64": (lambda x: native.activate(x.astype(np.float64), x, "relu"), TypeError, "float32"),
    "read-only out": (lambda x: native.activate(x, np.broadcast_to(x, x.shape), "relu"), (TypeError, ValueError),
                      "writable|read-only|contiguous"),
    "strided": (lambda x: native.activate(x[:, ::2], np.empty((4, 3), np.float32), "relu"), (TypeError, ValueError),
                "contiguous"),
    "out size": (lambda x: native.activate(x, np.empty(5, np.float32), "relu"), ValueError, "out and residual"),
    "residual size": (lambda x: native.activate(x, x, "relu", residual=np.ones(3, np.float32)), ValueError,
                      "out and residual"),
    "bias period": (lambda x: native.activate(x, x, "relu", bias=np.ones(5, np.float32)), ValueError, "whole periods"),
    "empty bias": (lambda x: native.activate(x, x, "relu", bias=np.ones(0, np.float32)), ValueError, "whole periods"),
    "plane": (lambda x: native.activate(x, x, "relu", bias=np.ones(2, np.float32), plane=0), ValueError, "positive"),
    "scale length": (lambda x: native.activate(x, x, "relu", bias=np.ones(2, np.float32), scale=np.ones(3, np.float32)),
                     ValueError, "3 scale values for 2 bias"),
    "scale period": (lambda x: native.activate(x, x, "relu", scale=np.ones(5, np.float32)), ValueError, "whole periods"),
    "layer_norm cols": (lambda x: native.layer_norm(x, x, 5, np.ones(5, np.float32)), ValueError, "whole rows"),
    "layer_norm zero cols": (lambda x: native.layer_norm(x, x, 0, np.ones(0, np.float32)), ValueError, "whole rows"),
    "layer_norm scale": (lambda x: native.layer_norm(x, x, 6, np.ones(5, np.float32)), ValueError, "scale and bias"),
    "layer_norm stats": (lambda x: native.layer_norm(x, x, 6, np.ones(6, np.float32), None, 1e-5,
                                                     np.ones(3, np.float32)), ValueError, "mean and inv_std"),
    "softmax cols": (lambda x: native.softmax(x, x, -3), ValueError, "whole rows"),
    "softmax out": (lambda x: native.softmax(x, np.empty(4, np.float32), 6), ValueError, "whole rows"),
}


@pytest.mark.parametrize("name", BAD_CALLS)
def test_bad_calls_are_refused(name):
    call, error, message = BAD_CALLS[name]
    x = np.ones((4, 6), np.float32)
    with pytest.raises(error, match=message):
        call(x)
    assert (x == 1).all()  # nothing written


def test_set_simd_returns_the_previous_setting():
    assert native.set_pointwise_simd(False) is True
    assert native.set_pointwise_simd(True) is False


# --- the kernels that call them: the same results as their numpy paths ----------------------------

def _session_model(nodes, x_shape, inits, outputs=("y",), opset=20, x_type=None):
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    from dcm.converters import ConvertOptions, from_onnx

    elem = x_type or onnx.TensorProto.FLOAT
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", elem, x_shape)],
                          [helper.make_tensor_value_info(o, elem, None) for o in outputs],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    return from_onnx(m, ConvertOptions(exact=True))


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _node(op, inputs, outputs, **attrs):
    from onnx import helper

    return helper.make_node(op, inputs, outputs, **attrs)


def _float16_gelu():
    onnx = pytest.importorskip("onnx")
    return (_session_model([_node("Gelu", ["x"], ["y"])], [5, 9], {}, x_type=onnx.TensorProto.FLOAT16),
            _rand(5, 9).astype(np.float16))


# name: a (model, input) maker; each runs compiled code through a different kernel or fused path.
GRAPHS = {
    "MatMul + bias + Gelu (MatMulAdd, one pass)": lambda: (_session_model(
        [_node("MatMul", ["x", "w"], ["m"]), _node("Add", ["m", "b"], ["a"]), _node("Gelu", ["a"], ["y"])],
        [6, 16], {"w": _rand(16, 24, seed=1), "b": _rand(24, seed=2)}), _rand(6, 16)),
    "Gemm + bias + HardSigmoid": lambda: (_session_model(
        [_node("Gemm", ["x", "w", "b"], ["m"], transB=1), _node("HardSigmoid", ["m"], ["y"], alpha=0.3, beta=0.4)],
        [6, 16], {"w": _rand(24, 16, seed=1), "b": _rand(24, seed=2)}), _rand(6, 16)),
    "Conv + bias + residual Add + Relu": lambda: (_session_model(  # 3x3: a 1x1 layer's kernel adds them itself
        [_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), _node("Add", ["c", "x"], ["a"]),
         _node("Relu", ["a"], ["y"])],
        [1, 8, 5, 7], {"w": _rand(8, 8, 3, 3, seed=1), "b": _rand(8, seed=2)}), _rand(1, 8, 5, 7)),
    "Conv + bias + SiLU": lambda: (_session_model(
        [_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), _node("Sigmoid", ["c"], ["s"]),
         _node("Mul", ["c", "s"], ["y"])],
        [2, 3, 6, 6], {"w": _rand(16, 3, 3, 3, seed=1), "b": _rand(16, seed=2)}), _rand(2, 3, 6, 6)),
    "LayerNormalization with Mean and InvStdDev": lambda: (_session_model(
        [_node("LayerNormalization", ["x", "s", "b"], ["y", "mean", "inv"], axis=-2)], [3, 4, 5],
        {"s": _rand(4, 5, seed=1), "b": _rand(1, 4, 5, seed=2)}, outputs=("y", "mean", "inv")),
        _rand(3, 4, 5) * 3 + 1),
    "LogSoftmax before opset 13 (2-D view)": lambda: (_session_model(
        [_node("LogSoftmax", ["x"], ["y"], axis=1)], [2, 3, 4], {}, opset=11), _rand(2, 3, 4) * 5),
    "Swish alpha 0.5 (opset 24)": lambda: (_session_model([_node("Swish", ["x"], ["y"], alpha=0.5)], [5, 9], {},
                                                          opset=24), _rand(5, 9) * 4),
    "float16 Gelu (numpy path)": _float16_gelu,
}


@pytest.mark.parametrize("name", GRAPHS)
def test_kernels_match_their_numpy_paths(name):
    model, x = GRAPHS[name]()
    calls = []
    wrapped = {n: (lambda *a, _f=getattr(native, n), _n=n, **k: (calls.append(_n), _f(*a, **k))[1])
               for n in ("activate", "layer_norm", "softmax", "gemm_packed")}  # gemm_packed: a fused Gelu
    with mock.patch.multiple(native, **wrapped):
        compiled = InferenceSession(model, threads=1).run(None, {"x": x})
    with mock.patch.multiple(native, activate=None, layer_norm=None, softmax=None, gemm_packed=None):
        plain = InferenceSession(model, threads=1).run(None, {"x": x})
    if x.dtype == np.float16:
        assert not calls  # float16 keeps its numpy path: the same values
        np.testing.assert_array_equal(compiled[0], plain[0])
        return
    assert calls, "the compiled kernels were not reached"
    for got, want in zip(compiled, plain):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_give_the_one_thread_result(threads):
    """activate, layer_norm and softmax split large arrays over the native pool: bit for bit the
    one-thread values (a bias per column and per channel, a residual)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((7, 48, 33, 29)).astype(np.float32)
    res = rng.standard_normal(x.shape).astype(np.float32)
    for kwargs in ({}, {"bias": rng.standard_normal(29).astype(np.float32)},
                   {"bias": rng.standard_normal(48).astype(np.float32), "plane": 33 * 29, "residual": res}):
        one, many = np.empty_like(x), np.empty_like(x)
        native.activate(x, one, "gelu", **kwargs)
        native.activate(x, many, "gelu", **kwargs, threads=threads)
        np.testing.assert_array_equal(many, one)
    rows = x.reshape(-1, 29)
    scale, bias = rng.standard_normal(29).astype(np.float32), rng.standard_normal(29).astype(np.float32)
    outs = []
    for t in (1, threads):
        y, mean, inv = np.empty_like(rows), np.empty(len(rows), np.float32), np.empty(len(rows), np.float32)
        native.layer_norm(rows, y, 29, scale, bias, 1e-5, mean, inv, t)
        s = np.empty_like(rows)
        native.softmax(rows, s, 29, False, t)
        outs.append((y, mean, inv, s))
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
