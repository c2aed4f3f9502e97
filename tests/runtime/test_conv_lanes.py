"""Dense convolutions of few input channels take the compiled conv_lanes2d kernel (8 output channels
to a register) and match onnxruntime: strides, dilations, asymmetric pads, odd sizes, output channels
not a multiple of 8, 1-D, batches, thread splits, fused activations, the portable path; grouped
layers (RegNet's) on the AVX2 path, every path giving onnxruntime's sums; and the kernel refuses bad
sizes, groups and buffers with a ValueError, never a read past a buffer."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from dcm.converters import ConvertOptions, from_onnx  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from dcm.runtime.cpu import lanes, native  # noqa: E402
from tests.runtime.conv_models import check_kernel, conv_model  # noqa: E402
from tests.runtime.switches import switched  # noqa: E402

pytestmark = pytest.mark.skipif(native.conv_lanes2d is None, reason="built without the native kernels")


def _model(c, k_out, kernel, x_shape, attrs, act=None, bias=True):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((k_out, c, *kernel)).astype(np.float32)
    b = rng.standard_normal(k_out).astype(np.float32) if bias else None
    return conv_model(w, b, x_shape, attrs, act)


def _check(m, x, threads=1, kernel="lanes"):
    check_kernel(m, x, kernel, threads, tol=1e-4)


@pytest.mark.parametrize("c, k_out, kernel, attrs", [
    (3, 32, (3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),  # MobileNetV2's stem
    (3, 13, (7, 7), {"pads": [3, 3, 3, 3], "strides": [2, 2]}),  # ResNet's, 13 outputs: a partial group of 8
    (3, 8, (4, 4), {"strides": [4, 4]}),  # ConvNeXt's patchify stem
    (1, 12, (5, 5), {}),  # LeNet-like, 12 outputs: 8 and a partial group (8 or fewer at stride 1: direct, AVX-512)
    (4, 9, (3, 3), {"pads": [0, 1, 2, 0]}),  # asymmetric pads
    (2, 16, (3, 3), {"pads": [2, 2, 2, 2], "dilations": [2, 2]}),
    (3, 6, (3, 5), {"strides": [3, 2], "pads": [1, 2, 1, 2]}),
    (2, 7, (2, 4), {"strides": [1, 3], "dilations": [2, 1], "pads": [3, 0, 0, 3]}),  # pads wider than the kernel
    (3, 10, (3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
])
@pytest.mark.parametrize("width", [13, 37])  # rows of 8-pixel blocks with and without a tail
def test_matches_onnxruntime(c, k_out, kernel, attrs, width):
    x = np.random.default_rng(1).standard_normal((2, c, 11, width)).astype(np.float32)
    _check(_model(c, k_out, kernel, [2, c, 11, width], attrs), x)


def test_one_dimensional_without_bias():
    x = np.random.default_rng(1).standard_normal((2, 3, 41)).astype(np.float32)
    _check(_model(3, 12, (5,), [2, 3, 41], {"pads": [2, 1], "strides": [2]}, bias=False), x)


@pytest.mark.parametrize("act, fused", [("Clip", "Clip"), ("Relu", "Relu"), ("HardSwish", "HardSwish")])
def test_fused_activation(act, fused):
    x = (np.random.default_rng(1).standard_normal((1, 3, 9, 20)) * 4).astype(np.float32)
    x[0, 2, 4, 4] = np.nan
    m = _model(3, 11, (3, 3), [1, 3, 9, 20], {"pads": [1, 1, 1, 1]}, act)
    assert InferenceSession(from_onnx(m, ConvertOptions(exact=True))).describe()[0]["fused"] == fused
    _check(m, x)


@pytest.mark.parametrize("batch", [1, 3])
def test_thread_split(batch):
    x = np.random.default_rng(1).standard_normal((batch, 3, 10, 19)).astype(np.float32)
    _check(_model(3, 21, (3, 3), [batch, 3, 10, 19], {"pads": [1, 1, 1, 1], "strides": [2, 1]}, "Clip"), x,
           threads=2)


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_give_the_one_thread_result(threads):
    """The pool's threads take units of (sample, group, output row): the same sums as one thread, bit for bit."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 3, 17, 23)).astype(np.float32)
    w = rng.standard_normal((45, 3, 3, 3)).astype(np.float32)
    args = (x, w, (2, 2), (1, 1), [1, 1], [0, 1], rng.standard_normal(45).astype(np.float32), None)
    np.testing.assert_array_equal(lanes.conv_lanes(*args, threads), lanes.conv_lanes(*args, 1))


@pytest.mark.parametrize("out_channels", [10, 29])  # AVX-512: one pair of groups of 8, then pairs and a single
@pytest.mark.parametrize("strides", [(1, 1), (2, 2), (1, 3)])  # the SIMD paths' constant strides and another
def test_portable_and_avx2_paths_match_the_fastest(strides, out_channels):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 9, 30)).astype(np.float32)
    w = rng.standard_normal((out_channels, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(out_channels).astype(np.float32)
    args = (x, w, strides, (1, 1), [1, 1], [1, 1], b, (0.0, 6.0), 1)
    fast = lanes.conv_lanes(*args)
    for simd, avx512 in ((True, False), (False, False)):
        with switched(native.set_simd, simd), switched(native.set_avx512, avx512):
            other = lanes.conv_lanes(*args)
        np.testing.assert_allclose(other, fast, rtol=1e-5, atol=1e-5)


def _ort(m, x):
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("c, k_out, groups, strides, width", [
    (32, 32, 2, (1, 1), 14),  # RegNet's 16 channels a group: one block of 16
    (48, 48, 3, (2, 2), 15),  # stride 2, an odd plane
    (40, 40, 2, (1, 1), 7),  # 20 outputs a group: a block of 16, then 4 in the 8-channel block
    (24, 36, 2, (1, 1), 9),  # 18 a group from 12 inputs; runs of 5 + 4 pixels
    (16, 24, 2, (1, 2), 23),  # 12 a group: a partial block of 16, strides (1, 2)
    (18, 27, 3, (2, 1), 6),  # 9 a group: 16-channel block of 9
])
@pytest.mark.parametrize("path", ["avx512", "avx2", "portable"])
def test_grouped_matches_onnxruntime_on_every_path(c, k_out, groups, strides, width, path):
    rng = np.random.default_rng(4)
    w = rng.standard_normal((k_out, c // groups, 3, 3)).astype(np.float32)
    b = rng.standard_normal(k_out).astype(np.float32)
    x = rng.standard_normal((2, c, 10, width)).astype(np.float32)
    attrs = {"pads": [1, 1, 1, 1], "strides": list(strides), "group": groups}
    want = _ort(conv_model(w, b, list(x.shape), attrs, "Clip"), x)
    if path == "avx512" and native.batched_simd() != "avx512":
        pytest.skip("this CPU has no AVX-512")
    if path == "avx2" and native.batched_simd() == "portable":
        pytest.skip("this CPU has no AVX2")
    with switched(native.set_simd, path != "portable"), switched(native.set_avx512, path == "avx512"):
        got = lanes.conv_lanes(x, w, strides, (1, 1), [1, 1], [1, 1], b, (0.0, 6.0), 2, groups)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("groups, outputs_a_group, taken", [(10, 16, True), (4, 32, True), (8, 4, False)])
def test_grouped_layers_take_it_on_the_avx2_path(groups, outputs_a_group, taken):
    """RegNet-style groups (8 or more outputs a group) take conv_lanes2d where the CPU runs the AVX2 path
    (switched to it on an AVX-512 CPU); ResNeXt-style groups of 4 outputs stay on the direct kernel."""
    if native.batched_simd() == "portable":
        pytest.skip("this CPU has no AVX2")
    rng = np.random.default_rng(5)
    c = 16 * groups
    w = rng.standard_normal((groups * outputs_a_group, 16, 3, 3)).astype(np.float32)
    x = rng.standard_normal((1, c, 14, 14)).astype(np.float32)
    m = conv_model(w, None, [1, c, 14, 14], {"pads": [1, 1, 1, 1], "group": groups}, "Relu")
    with switched(native.set_avx512, False):
        sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)), threads=2)
        assert (sess.describe()[0]["kernel"] == "lanes") == taken
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], _ort(m, x), rtol=1e-4, atol=1e-4)


def test_without_the_native_kernel_im2col_takes_it(monkeypatch):
    monkeypatch.setattr(native, "conv_lanes2d", None)
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    _check(_model(3, 8, (3, 3), [1, 3, 16, 16], {"pads": [1, 1, 1, 1], "strides": [2, 2]}), x, kernel="dense")


def test_native_refuses_bad_arguments():
    x, y, w = np.zeros((1, 2, 4, 4), np.float32), np.zeros((1, 3, 4, 4), np.float32), np.zeros((3, 2, 3, 3), np.float32)
    call = native.conv_lanes2d
    call(x, y, w, (1, 2, 4, 4), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 3)
    with pytest.raises(ValueError, match="must have"):  # output too small for the geometry
        call(x, np.zeros((1, 3, 3, 4), np.float32), w, (1, 2, 4, 4), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 3)
    with pytest.raises(ValueError, match="must have"):  # weight for fewer output channels than asked
        call(x, y, w[:2], (1, 2, 4, 4), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 3)
    with pytest.raises(ValueError, match="must have"):  # bias of 2 values for 3 outputs
        call(x, y, w, (1, 2, 4, 4), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 3, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="out of bounds"):
        call(x, y, w, (1, 2, 4, 4), (3, 3), (0, 1), (1, 1), (1, 1, 1, 1), 3)
    with pytest.raises(ValueError, match="out of bounds"):
        call(x, y, w, (1, 2, 4, 4), (3, 3), (1, 1), (1, 1), (-1, 1, 1, 1), 3)
    with pytest.raises(ValueError, match="out of bounds"):
        call(x, y, w, (1 << 40, 1 << 40, 4, 4), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 3)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        call(x, y, w, (1, 2, 4, 4), (3, 3), (1, 1), (3, 3), (0, 0, 0, 0), 3)
    with pytest.raises(ValueError, match="thread count"):
        call(x, y, w, (1, 2, 4, 4), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 3, None, None, 0)
    with pytest.raises(ValueError, match="groups=2 must divide"):  # 3 outputs in 2 groups
        call(x, y, w[:, :1], (1, 2, 4, 4), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 3, None, None, 1, 2)
    with pytest.raises(ValueError, match="groups=0 must divide"):
        call(x, y, w, (1, 2, 4, 4), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 3, None, None, 1, 0)
    with pytest.raises(ValueError, match="must have"):  # a grouped weight holds C / groups input channels
        call(x, np.zeros((1, 4, 4, 4), np.float32), np.zeros((4, 2, 3, 3), np.float32), (1, 2, 4, 4), (3, 3),
             (1, 1), (1, 1), (1, 1, 1, 1), 4, None, None, 1, 2)
    with pytest.raises(TypeError):  # float64 buffers are refused, not reinterpreted
        call(x.astype(np.float64), y, w, (1, 2, 4, 4), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 3)


def test_bad_geometry_is_a_dcm_error():
    from dcm.errors import DcmError

    m = _model(3, 16, (3, 3), [1, 3, 9, 9], {"dilations": [9, 9]})
    sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)))
    assert sess.describe()[0]["kernel"] == "lanes"
    with pytest.raises(DcmError):
        sess.run(None, {"x": np.ones((1, 3, 9, 9), np.float32)})
    with pytest.raises(DcmError):  # fewer input channels than the weight's
        sess.run(None, {"x": np.ones((1, 2, 9, 9), np.float32)})
