"""Depthwise convolutions take the compiled depthwise2d kernel and match onnxruntime: strides,
dilations, asymmetric pads, channel multipliers, 1-D, batches, thread splits, fused ReLU6; and the
kernel refuses bad sizes and buffers with a ValueError, never a read past a buffer."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from dcm.converters import ConvertOptions, from_onnx  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from dcm.runtime.cpu import depthwise, native  # noqa: E402
from tests.runtime.conv_models import check_kernel, conv_model  # noqa: E402
from tests.runtime.activations import activation  # noqa: E402
from tests.runtime.switches import switched  # noqa: E402

pytestmark = pytest.mark.skipif(native.depthwise2d is None, reason="built without the native kernels")


def _model(c, multiplier, kernel, x_shape, attrs, act=None, bias=True):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((c * multiplier, 1, *kernel)).astype(np.float32)
    b = rng.standard_normal(c * multiplier).astype(np.float32) if bias else None
    return conv_model(w, b, x_shape, {"group": c, **attrs}, act)


def _check(m, x, threads=1):
    return check_kernel(m, x, "depthwise", threads)


@pytest.mark.parametrize("c, multiplier, kernel, attrs", [
    (8, 1, (3, 3), {"pads": [1, 1, 1, 1]}),
    (8, 1, (3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    (6, 1, (5, 5), {"pads": [2, 2, 2, 2], "strides": [2, 2]}),
    (5, 2, (3, 3), {"pads": [0, 1, 2, 0]}),  # multiplier 2, asymmetric pads
    (4, 1, (3, 3), {"pads": [2, 2, 2, 2], "dilations": [2, 2]}),
    (4, 3, (3, 5), {"strides": [3, 2], "pads": [1, 2, 1, 2]}),
    (3, 1, (3, 3), {"pads": [4, 4, 4, 4]}),  # pads wider than the kernel
    (4, 1, (3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    (4, 1, (5, 7), {"pads": [2, 3, 2, 3]}),  # stride 1 with 1, 2, 3 and 4 kernel columns per pass
    (3, 1, (4, 6), {"pads": [1, 2, 2, 3], "dilations": [1, 2]}),
    (4, 2, (2, 2), {}),
    (4, 1, (3, 1), {"pads": [1, 0, 1, 0]}),
])
@pytest.mark.parametrize("width", [13, 70])  # outputs under 32 wide take 8 channels side by side, wider by rows
def test_matches_onnxruntime(c, multiplier, kernel, attrs, width):
    x = np.random.default_rng(1).standard_normal((2, c, 11, width)).astype(np.float32)
    _check(_model(c, multiplier, kernel, [2, c, 11, width], attrs), x)


@pytest.mark.parametrize("width", [17, 90])
def test_one_dimensional_without_bias(width):
    x = np.random.default_rng(1).standard_normal((2, 6, width)).astype(np.float32)
    _check(_model(6, 1, (5,), [2, 6, width], {"pads": [2, 1], "strides": [2]}, bias=False), x)


@pytest.mark.parametrize("act, fused", [("Clip", "Clip"), ("Relu", "Relu"), ("HardSwish", "HardSwish"),
                                        ("Sigmoid", "Sigmoid")])
@pytest.mark.parametrize("width", [9, 40])
def test_fused_activation(act, fused, width):
    x = (np.random.default_rng(1).standard_normal((1, 8, 9, width)) * 4).astype(np.float32)
    x[0, 2, 4, 4] = np.nan
    m = _model(8, 1, (3, 3), [1, 8, 9, width], {"pads": [1, 1, 1, 1]}, act)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)))
    assert sess.describe()[0]["fused"] == fused
    got = sess.run(None, {"x": x})[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("width, strides", [(64, (2, 2)), (64, (1, 1)), (64, (2, 1)), (20, (1, 1))])
def test_threads_give_the_sums_of_one(width, strides):
    """Lanes, flat and row paths split over 2 and 3 threads of the native pool (ranges of whole
    groups of 8 planes, at least 65k multiply-adds each: several here), bit for bit."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 28, 40, width)).astype(np.float32)
    w, b = rng.standard_normal((28, 3, 3)).astype(np.float32), rng.standard_normal(28).astype(np.float32)
    one = depthwise.depthwise(x, w, strides, (1, 1), [1, 1], [1, 1], b, ("clip", 0.0, 6.0), 1)
    for threads in (2, 3):
        got = depthwise.depthwise(x, w, strides, (1, 1), [1, 1], [1, 1], b, ("clip", 0.0, 6.0), threads)
        np.testing.assert_array_equal(got, one)


def test_thread_split_matches_onnxruntime():
    x = np.random.default_rng(1).standard_normal((3, 16, 30, 30)).astype(np.float32)
    _check(_model(16, 1, (3, 3), [3, 16, 30, 30], {"pads": [1, 1, 1, 1], "strides": [2, 2]}, "Clip"), x, threads=2)


@pytest.mark.parametrize("width", [13, 70])  # the lanes tile and the flat plane
def test_reused_scratch_borders_are_zero(width):
    """Each thread keeps its scratch between calls: a layer with less padding than the last one must
    still read zeros around its planes, not the last call's values (NaN here)."""
    nan = np.full((1, 8, 11, width + 4), np.nan, np.float32)
    depthwise.depthwise(nan, np.ones((8, 5, 5), np.float32), (1, 1), (1, 1), [2, 2], [2, 2], None, None, 1)
    x = np.random.default_rng(5).standard_normal((1, 8, 11, width)).astype(np.float32)
    _check(_model(8, 1, (3, 3), [1, 8, 11, width], {"pads": [1, 1, 1, 1]}), x)


def test_native_refuses_bad_arguments():
    x, y, w = np.zeros((1, 2, 4, 4), np.float32), np.zeros((1, 2, 4, 4), np.float32), np.zeros((2, 3, 3), np.float32)
    native.depthwise2d(x, y, w, (1, 2, 4, 4), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1))
    with pytest.raises(ValueError, match="must have"):  # output too small for the geometry
        native.depthwise2d(x, np.zeros((1, 2, 3, 4), np.float32), w, (1, 2, 4, 4), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1))
    with pytest.raises(ValueError, match="must have"):  # weight for fewer channels than the shape says
        native.depthwise2d(x, y, w[:1], (1, 2, 4, 4), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1))
    with pytest.raises(ValueError, match="out of bounds"):
        native.depthwise2d(x, y, w, (1, 2, 4, 4), (3, 3), (0, 1), (1, 1), (1, 1, 1, 1))
    with pytest.raises(ValueError, match="out of bounds"):
        native.depthwise2d(x, y, w, (1 << 40, 1 << 40, 4, 4), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        native.depthwise2d(x, y, w, (1, 2, 4, 4), (3, 3), (1, 1), (3, 3), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="must have"):  # bias of 3 values for 2 channels
        native.depthwise2d(x, y, w, (1, 2, 4, 4), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="out of bounds"):  # a plane range past the end
        native.depthwise2d(x, y, w, (1, 2, 4, 4), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1, None, None, 0, 3)


# lanes (narrow; strided), flat or AVX-512 rows (wide stride 1), rows (wide, vertical stride only)
@pytest.mark.parametrize("width, strides", [(9, (1, 1)), (70, (2, 2)), (40, (1, 1)), (70, (2, 1)), (90, (1, 1))])
def test_portable_paths_match_simd(width, strides):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 5, 9, width)).astype(np.float32)
    w = rng.standard_normal((10, 3, 3)).astype(np.float32)
    b = rng.standard_normal(10).astype(np.float32)
    args = (x, w, strides, (1, 1), [1, 1], [1, 1], b, ("clip", 0.0, 6.0), 1)
    fast = depthwise.depthwise(*args)  # wide stride-1 layers: the AVX-512 rows where the CPU has them
    with switched(native.set_avx512, False):
        avx2 = depthwise.depthwise(*args)
    with switched(native.set_simd, False):
        portable = depthwise.depthwise(*args)
    np.testing.assert_allclose(avx2, fast, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(portable, fast, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("simd", [True, False])
@pytest.mark.parametrize("width, strides", [(9, (2, 2)), (70, (1, 1)), (70, (2, 1))])
@pytest.mark.parametrize("act", [("silu", 1.0, 0.0), ("sigmoid", 0.0, 0.0), ("hardswish", 0.0, 0.0),
                                 ("relu", 0.0, 0.0), ("gelu", 0.0, 0.0), ("gelu_tanh", 0.0, 0.0)])
def test_activations_after_each_range(act, width, strides, simd):
    """SiLU, Sigmoid and HardSwish are applied to each thread's range of planes after it (a clamp as
    each value is stored): the unfused kernel's output through the same formulas, on every path."""
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((2, 40, 30, width)) * 3).astype(np.float32)
    x[0, 3, 4, 5] = np.nan
    w, b = rng.standard_normal((40, 3, 3)).astype(np.float32), rng.standard_normal(40).astype(np.float32)
    with switched(native.set_simd, simd):
        raw = depthwise.depthwise(x, w, strides, (1, 1), [1, 1], [1, 1], b, None, 1).astype(np.float64)
        got = depthwise.depthwise(x, w, strides, (1, 1), [1, 1], [1, 1], b, act, 2)
    want = activation(act, raw)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attrs, x_shape", [  # (negative pads are refused at load, by checks.py)
    ({"pads": [1, 1, 1, 1]}, [1, 3, 9, 9]),  # fewer channels than the weight's groups
    ({"dilations": [9, 9]}, [1, 4, 9, 9]),  # the window is larger than the input
])
def test_bad_geometry_is_a_dcm_error(attrs, x_shape):
    from dcm.errors import DcmError

    m = _model(4, 1, (3, 3), x_shape, attrs)
    sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)))
    assert sess.describe()[0]["kernel"] == "depthwise"
    with pytest.raises(DcmError):
        sess.run(None, {"x": np.ones(x_shape, np.float32)})
