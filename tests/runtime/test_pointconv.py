"""Dense 1x1 convolutions take the compiled pointwise_conv kernel (where the CPU has AVX-512) and match
numpy and onnxruntime: output channels past a block of 8, planes of partial vectors, batches, a
per-sample input scale, a fused residual and clamp (NaN kept), threads; the portable path gives the
same sums; bad sizes and buffers get a ValueError before any read."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dcm.converters import ConvertOptions, from_onnx  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from dcm.runtime.cpu import native, pointconv  # noqa: E402
from tests.runtime.conv_models import check_kernel, conv_model  # noqa: E402
from tests.runtime.activations import activation  # noqa: E402
from tests.runtime.switches import switched  # noqa: E402

pytestmark = pytest.mark.skipif(native.pointwise_conv is None, reason="built without the compiled 1x1 kernel")


def _reference(x, w, bias=None, act=None, residual=None, scale=None):
    n, c = x.shape[:2]
    xs = x if scale is None else x * scale.reshape(-1, c, 1, 1)
    y = np.einsum("oc,nchw->nohw", w.astype(np.float64), xs.astype(np.float64))
    if bias is not None:
        y += bias.reshape(1, -1, 1, 1)
    if residual is not None:
        y += residual
    return activation(act, y).astype(np.float32)


@pytest.mark.parametrize("simd", [True, False])
@pytest.mark.parametrize("n, c, out, hw", [(1, 16, 96, (7, 7)), (2, 5, 13, (1, 1)), (1, 3, 8, (4, 4)),
                                           (3, 24, 17, (3, 11)), (1, 40, 9, (10, 10)), (2, 7, 30, (1, 65))])
def test_matches_numpy(simd, n, c, out, hw):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, *hw)).astype(np.float32)
    w = rng.standard_normal((out, c)).astype(np.float32)
    b, res = rng.standard_normal(out).astype(np.float32), rng.standard_normal((n, out, *hw)).astype(np.float32)
    scale = rng.standard_normal((n, c)).astype(np.float32)
    packed = pointconv.pack(w)
    with switched(native.set_pointconv_simd, simd):
        for args in [(None, None, None, None), (b, ("clip", 0.0, 6.0), None, None), (b, None, res, None),
                     (None, ("clip", -1.0, np.inf), res, scale), (b, ("relu", 0, 0), None, scale[:1]),
                     (b, ("silu", 1.0, 0.0), res, None), (None, ("silu", 1.702, 0.0), None, None),
                     (b, ("sigmoid", 0, 0), None, scale), (b, ("hardswish", 0, 0), res, None),
                     (b, ("gelu", 0, 0), res, None), (None, ("gelu_tanh", 0, 0), None, scale)]:
            got = pointconv.pointwise_conv(x, packed, out, *args, threads=2)
            np.testing.assert_allclose(got, _reference(x, w, *args), rtol=1e-4, atol=1e-4, err_msg=str(args[1]))


@pytest.mark.parametrize("simd", [True, False])
def test_nan_kept_inf_and_extremes(simd):
    x = np.ones((1, 4, 5, 5), np.float32)
    x[0, 1, 2, 3], x[0, 2, 0, 0], x[0, 3, 1, 0], x[0, 3, 1, 1] = np.nan, np.inf, -200.0, 200.0
    packed = pointconv.pack(np.ones((9, 4), np.float32))
    with switched(native.set_pointconv_simd, simd):
        clip = pointconv.pointwise_conv(x, packed, 9, None, ("clip", 0.0, 6.0), None, None, 1)
        silu = pointconv.pointwise_conv(x, packed, 9, None, ("silu", 1.0, 0.0), None, None, 1)
        sigmoid = pointconv.pointwise_conv(x, packed, 9, None, ("sigmoid", 0.0, 0.0), None, None, 1)
    assert np.isnan(clip[0, :, 2, 3]).all() and np.isnan(silu[0, :, 2, 3]).all() and np.isnan(sigmoid[0, :, 2, 3]).all()
    assert (clip[0, :, 0, 0] == 6).all() and (clip[0, :, 2, 2] == 4).all()  # inf clamped to the bound
    assert (silu[0, :, 0, 0] == np.inf).all() and (sigmoid[0, :, 0, 0] == 1).all()
    assert (sigmoid[0, :, 1, 0] == 0).all() and (silu[0, :, 1, 0] == 0).all()  # exp(-197) underflows to 0
    assert (sigmoid[0, :, 1, 1] == 1).all() and (silu[0, :, 1, 1] == 203).all()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("act", [None, "Clip", "Relu", "Sigmoid", "HardSwish"])
def test_session_takes_it_and_matches_onnxruntime(act, threads):
    if not pointconv.available():
        pytest.skip("this CPU has no AVX-512: 1x1 layers stay on BLAS")
    rng = np.random.default_rng(1)
    w, b = rng.standard_normal((20, 12, 1, 1)).astype(np.float32), rng.standard_normal(20).astype(np.float32)
    x = rng.standard_normal((2, 12, 9, 9)).astype(np.float32)
    sess = check_kernel(conv_model(w, b, [2, 12, 9, 9], {}, act), x, "dense", threads)
    assert sess.describe()[0]["product"] == "pointwise_conv"


@pytest.mark.parametrize("n, hw, strides", [(1, (56, 56), [2, 2]), (2, (15, 13), [2, 2]), (3, (9, 20), [3, 2]),
                                             (1, (7, 7), [1, 3])])
def test_strided_layers_take_it_and_match_onnxruntime(n, hw, strides):
    """ResNet's downsample convolutions (1x1, stride 2): the kernel runs on the subsampled input, odd
    planes leaving partial vectors and output channels past a block of 8."""
    if not pointconv.available():
        pytest.skip("this CPU has no AVX-512: 1x1 layers stay on BLAS")
    rng = np.random.default_rng(2)
    w, b = rng.standard_normal((20, 12, 1, 1)).astype(np.float32), rng.standard_normal(20).astype(np.float32)
    x = rng.standard_normal((n, 12, *hw)).astype(np.float32)
    sess = check_kernel(conv_model(w, b, [n, 12, *hw], {"strides": strides}, "Relu"), x, "dense", 2, tol=1e-4)
    assert sess.describe()[0]["product"] == "pointwise_conv"


def test_one_pixel_planes_stay_on_blas():
    """Squeeze-and-excitation convolutions (a 1x1 plane) run BLAS's matrix-vector product instead."""
    if not pointconv.available():
        pytest.skip("this CPU has no AVX-512: 1x1 layers stay on BLAS")
    rng = np.random.default_rng(1)
    w, b = rng.standard_normal((20, 12, 1, 1)).astype(np.float32), rng.standard_normal(20).astype(np.float32)
    sess = check_kernel(conv_model(w, b, [2, 12, "h", "w"], {}, "Sigmoid"), rng.standard_normal((2, 12, 1, 1)).astype(
        np.float32), "dense")
    calls = []
    real = native.pointwise_conv
    try:
        native.pointwise_conv = lambda *a, **k: calls.append(a) or real(*a, **k)
        sess.run(None, {"x": rng.standard_normal((2, 12, 1, 1)).astype(np.float32)})
        sess.run(None, {"x": rng.standard_normal((2, 12, 2, 2)).astype(np.float32)})
    finally:
        native.pointwise_conv = real
    assert len(calls) == 1 and calls[0][0].shape == (2, 12, 2, 2)


def _residual_model(relu_first: bool) -> onnx.ModelProto:
    """y = act(Conv1x1(x) + x) (MobileNetV2's projection, then a ReLU6), or Relu(Conv1x1(x)) + x."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
             numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi")]
    conv = helper.make_node("Conv", ["x", "w", "b"], ["c"])
    nodes = ([conv, helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Add", ["r", "x"], ["y"])] if relu_first
             else [conv, helper.make_node("Add", ["c", "x"], ["a"]), helper.make_node("Clip", ["a", "lo", "hi"], ["y"])])
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("relu_first", [False, True])
def test_fused_residual_matches_onnxruntime(relu_first):
    m = _residual_model(relu_first)
    x = np.random.default_rng(3).standard_normal((1, 8, 6, 6)).astype(np.float32)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)))
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, weight, message", [
    ((1, 4, 9, 24), 64, "x must have"),  # x has 100 values, not 4 x 24
    ((1, 4, 9, 25), 31, "weight"),  # a packed weight of 31 values, not 2 x 4 x 8
    ((1, 0, 9, 25), 64, "out of bounds"),
    ((2**40, 4, 9, 25), 64, "out of bounds"),
    ((2**29, 2**29, 2**29, 8), 64, "overflow"),
])
def test_refuses_bad_sizes(shape, weight, message):
    x, y, w = np.ones(100, np.float32), np.ones(225, np.float32), np.ones(weight, np.float32)
    with pytest.raises(ValueError, match=message):
        native.pointwise_conv(x, y, w, shape)


def test_refuses_bad_buffers():
    x, y, w = np.ones((1, 4, 5), np.float32), np.ones((1, 8, 5), np.float32), np.ones(32, np.float32)
    native.pointwise_conv(x, y, w, (1, 4, 8, 5))
    with pytest.raises(ValueError, match="must not be x"):
        native.pointwise_conv(y, y, np.ones(64, np.float32), (1, 8, 8, 5))
    with pytest.raises(ValueError, match="bias"):
        native.pointwise_conv(x, y, w, (1, 4, 8, 5), bias=np.ones(7, np.float32))
    with pytest.raises(ValueError, match="scale"):
        native.pointwise_conv(x, y, w, (1, 4, 8, 5), scale=np.ones(5, np.float32))
    with pytest.raises(ValueError, match="unknown activation 'mish'"):
        native.pointwise_conv(x, y, w, (1, 4, 8, 5), act=("mish", 0.0, 0.0))
    with pytest.raises(TypeError, match="float32"):
        native.pointwise_conv(x.astype(np.float64), y, w, (1, 4, 8, 5))
