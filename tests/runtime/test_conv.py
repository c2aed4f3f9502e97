"""Conv's kernel choice (direct sparse, Winograd, lanes, im2col) and the direct kernel's thread split."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dcm.converters import ConvertOptions, from_onnx  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from dcm.runtime.cpu import conv, native  # noqa: E402

pytestmark = pytest.mark.skipif(native.SparseConv is None, reason="built without the native kernels")
AVX512 = native.batched_simd is not None and native.batched_simd() == "avx512"  # SparseConv's 16-pixel path


def _model(w, x_shape, attrs=None):
    g = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["c"], **(attrs or {})),
                           helper.make_node("Relu", ["c"], ["y"])], "t",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "w"),
                           numpy_helper.from_array(np.linspace(-1, 1, w.shape[0]).astype(np.float32), "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _weight(shape, density, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * (rng.random(shape) < density)).astype(np.float32)


@pytest.mark.parametrize("shape, density, strides, expected", [
    ((20, 1, 5, 5), 0.66, [1, 1], "direct"),  # few weights: direct at any density
    ((64, 64, 3, 3), 0.1, [1, 1], "direct"),  # pruned
    # wide: direct up to 15% dense, or 35% with the AVX-512 path; Winograd above
    ((64, 64, 3, 3), 0.2, [1, 1], "direct" if AVX512 else "winograd"),
    ((64, 64, 3, 3), 0.3, [1, 1], "direct" if AVX512 else "winograd"),
    ((64, 64, 3, 3), 0.5, [1, 1], "winograd"),
    # horizontal stride: direct on AVX-512 (phases of the input) up to its density limit; else im2col, then
    # the native sparse product up to 15%, BLAS above
    ((64, 64, 3, 3), 0.1, [1, 2], "direct/sparse"),
    ((64, 64, 3, 3), 0.25, [1, 2], "direct/dense"),
    ((64, 64, 3, 3), 0.4, [1, 2], "dense"),
    ((64, 64, 1, 1), 0.03, [1, 1], "direct"),  # 1x1: direct only when very sparse ...
    ((64, 64, 1, 1), 0.2, [1, 1], "dense"),  # ... else one GEMM on NCHW, however few its weights
    ((64, 64, 1, 1), 1.0, [1, 1], "dense"),
    ((32, 3, 3, 3), 1.0, [2, 2], "lanes"),  # few input channels (a stem), dense: 8 outputs to a register
    ((32, 3, 3, 3), 1.0, [1, 1], "lanes"),  # ... also where direct could take it ...
    ((8, 3, 3, 3), 1.0, [1, 1], "direct/lanes"),  # ... but for 8 outputs or fewer (AVX-512)
    ((8, 3, 3, 3), 1.0, [2, 2], "lanes"),  # (at stride 1)
    ((32, 3, 3, 3), 0.5, [1, 1], "direct"),  # ... unless pruned
    ((32, 3, 3, 3), 0.5, [2, 2], "lanes"),  # strided: against direct up to its 35% limit (AVX-512) ...
    ((32, 3, 3, 3), 0.3, [2, 2], "direct/lanes"),  # ... where direct cannot run, against im2col ...
    ((64, 3, 7, 7), 0.3, [2, 2], "direct/lanes"),  # (ResNet's stem, pruned as the zoo prunes it)
    ((32, 3, 3, 3), 0.1, [2, 2], "direct/sparse"),  # ... unless very sparse
    ((16, 16, 3, 3), 1.0, [2, 2], "lanes"),  # 144 taps per output
    ((16, 32, 3, 3), 1.0, [2, 2], "lanes"),  # 288 taps of a 3x3 layer, where Winograd cannot run ...
    ((16, 32, 4, 4), 1.0, [2, 2], "dense"),  # ... but 512 taps: BLAS
    ((32, 32, 3, 3), 1.0, [1, 1], "winograd"),  # 32 channels: Winograd where it can run, when dense ...
    ((32, 32, 3, 3), 0.3, [1, 1], "direct"),  # ... direct when pruned
])
def test_kernel_choice(shape, density, strides, expected):
    model = from_onnx(_model(_weight(shape, density), [1, shape[1], 12, 12], {"strides": strides}),
                      ConvertOptions(exact=True))
    sess = InferenceSession(model)
    avx512, other = expected.split("/") if "/" in expected else (expected, expected)  # AVX-512 CPU or not
    assert sess.describe()[0]["kernel"] == (avx512 if native.batched_simd() == "avx512" else other)
    assert sess.describe()[0]["fused"] == "Relu"
    assert InferenceSession(model, kernels="dense").describe()[0]["kernel"] in ("dense", "winograd", "lanes")


@pytest.mark.parametrize("strides, expected", [([1, 1], "direct"), ([2, 2], "dense")])
def test_grouped_layers_count_weights_per_group(strides, expected):
    """RegNetX's 400-channel 3x3 layer of 25 groups: 57.6k weights, but 2.3k a group, where im2col and 25
    products of 16 rows cost more than the direct kernel (one layer at 7x7, one thread, Zen 3 without
    AVX-512: 0.75 -> 0.32 ms); its stride-2 form keeps im2col (the few-weights rule was measured at
    stride 1 only). On the AVX2 path conv_lanes2d takes both (lanes.GROUP_MIN_OUTPUTS). Without the
    graph passes, so that no channels-last region takes the layer."""
    w = _weight((400, 16, 3, 3), 1.0)
    m = _model(w, [2, 400, 7, 7], {"strides": strides, "group": 25, "pads": [1, 1, 1, 1]})
    x = np.random.default_rng(3).standard_normal((2, 400, 7, 7)).astype(np.float32)
    sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)), optimize=False, threads=2)
    assert sess.describe()[0]["kernel"] == ("lanes" if native.batched_simd() == "avx2" else expected)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch", [1, 3])
def test_thread_split_matches_onnxruntime(batch):
    m = _model(_weight((10, 3, 3, 3), 0.4), [batch, 3, 9, 13], {"pads": [1, 0, 2, 1]})
    x = np.random.default_rng(1).standard_normal((batch, 3, 9, 13)).astype(np.float32)
    x[0, 1, 4, 5] = np.nan  # the poisoned windows too
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)), threads=2)
    assert sess.describe()[0]["kernel"] == "direct"
    got = sess.run(None, {"x": x})[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def _residual_model(w, stride, act, residual):
    """Conv(x) + bias [+ r, a second input] -> act: a fused Add and activation."""
    c_out = w.shape[0]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=[stride] * 2, pads=[w.shape[2] // 2] * 4)]
    bias = np.linspace(-1, 1, c_out).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 40, 10, 12])]
    last = "c"
    if residual:
        inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, c_out, 10 // stride, 12 // stride]))
        nodes.append(helper.make_node("Add", ["c", "r"], ["a"]))
        last = "a"
    if act == "Clip":
        inits += [numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi")]
        nodes.append(helper.make_node("Clip", [last, "lo", "hi"], ["y"]))
    elif act == "SiLU":
        nodes += [helper.make_node("Sigmoid", [last], ["s"]), helper.make_node("Mul", [last, "s"], ["y"])]
    else:
        nodes.append(helper.make_node(act, [last], ["y"]))
    g = helper.make_graph(nodes, "t", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("act", ["Clip", "Relu", "SiLU", "HardSwish"])
@pytest.mark.parametrize("shape, stride", [((24, 40, 1, 1), 1), ((24, 40, 3, 3), 2)])  # the 1x1 GEMM, im2col
def test_bias_residual_and_activation_in_one_pass_match_onnxruntime(shape, stride, act, residual):
    m = _residual_model(_weight(shape, 1.0), stride, act, residual)
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((1, 40, 10, 12)).astype(np.float32)}
    feeds["x"][0, 3, 4, 5] = np.nan
    if residual:
        feeds["r"] = rng.standard_normal((1, 24, 10 // stride, 12 // stride)).astype(np.float32)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)))
    conv_row = sess.describe()[0]
    fused = "Add" if residual else {"SiLU": "Sigmoid*Mul"}.get(act, act)
    assert conv_row["kernel"] == "dense" and conv_row["fused"].startswith(fused)
    got = sess.run(None, feeds)[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)  # sums of up to 360 products


@pytest.mark.parametrize("shape, hw, attrs, batch", [
    ((48, 64, 3, 3), (7, 7), {"pads": [1, 1, 1, 1]}, 1),  # ResNet's 7x7 planes (Winograd's layer otherwise)
    ((40, 64, 3, 3), (14, 13), {"pads": [1, 1, 1, 1], "strides": [2, 2]}, 1),  # strided (im2col's otherwise)
    ((33, 192, 3, 2), (5, 6), {"pads": [2, 0, 1, 1], "dilations": [2, 1]}, 2),  # uneven pads, 33 = 32 + 1 columns
    ((48, 64, 3, 3), (7, 7), {"pads": [1, 1, 1, 1]}, 3),  # 147 output pixels: Winograd
    ((40, 64, 3, 3), (46, 45), {"pads": [1, 1, 1, 1], "strides": [2, 2]}, 2),  # 1058 pixels: im2col's layer
    ((40, 64, 3, 3), (92, 90), {"pads": [1, 1, 1, 1], "strides": [2, 2]}, 1),  # 2070: im2col
    ((40, 56, 3, 3), (14, 13), {"pads": [1, 1, 1, 1], "strides": [2, 2]}, 1),  # 504 deep: im2col at any size
    ((40, 3, 16, 16), (64, 48), {"strides": [16, 16]}, 1),  # ViT's patches, 3 channels: im2col
    ((40, 512, 1, 1), (7, 7), {}, 1),  # 1x1 on ResNet-50's 7x7 planes
    ((33, 512, 1, 1), (14, 13), {"strides": [2, 2]}, 3),  # its strided shortcut, 3 samples of 7x7
    ((40, 512, 1, 1), (9, 8), {}, 1),  # a 72-pixel plane: the NCHW 1x1 kernel
    ((40, 256, 1, 1), (7, 7), {}, 1),  # 256 deep: the NCHW 1x1 kernel
])
def test_few_output_pixels_take_the_packed_gemm_and_match_onnxruntime(shape, hw, attrs, batch):
    """Dense layers of few output pixels in a call (PIXEL_GEMM_MAX_OUTPUTS), at least
    PIXEL_GEMM_MIN_DEPTH multiply-adds per output and PIXEL_GEMM_MIN_CHANNELS input channels run
    pixel_gemm, with its bias and Relu (1x1 layers on planes of at most PIXEL_GEMM_MAX_PLANE_POINTWISE
    pixels); others keep the kernel chosen at load."""
    from dcm.runtime.cpu import pixel_gemm

    if not pixel_gemm.available():
        pytest.skip("no AVX-512 packed GEMM on this CPU")
    w = _weight(shape, 1.0)
    x = np.random.default_rng(3).standard_normal((batch, shape[1], *hw)).astype(np.float32)
    m = _model(w, list(x.shape), attrs)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)), threads=2)
    deep = (shape[1] * shape[2] * shape[3] >= conv.PIXEL_GEMM_MIN_DEPTH
            and shape[1] >= conv.PIXEL_GEMM_MIN_CHANNELS)
    assert sess.describe()[0].get("few_pixels") == ("gemm_packed" if deep else None)
    calls, real = [], pixel_gemm.PixelGemm.conv
    try:  # pixel_gemm's calls (im2col's product may run on the packed GEMM too: blas.runs_avx2_only)
        pixel_gemm.PixelGemm.conv = lambda self, x, *a, **k: calls.append(x.shape) or real(self, x, *a, **k)
        got = sess.run(None, {"x": x})[0]
    finally:
        pixel_gemm.PixelGemm.conv = real
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    winograd = sess.describe()[0]["kernel"] == "winograd"
    limit = conv.PIXEL_GEMM_MAX_OUTPUTS_WINOGRAD if winograd else conv.PIXEL_GEMM_MAX_OUTPUTS
    small = shape[2:] != (1, 1) or ref.shape[2] * ref.shape[3] <= conv.PIXEL_GEMM_MAX_PLANE_POINTWISE
    taken = deep and small and ref.shape[0] * ref.shape[2] * ref.shape[3] <= limit
    assert calls == ([x.shape] if taken else [])
