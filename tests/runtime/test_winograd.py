"""Winograd F(2x2, 3x3) convolution against onnxruntime, and when the runtime chooses it."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcm.runtime.cpu import native, winograd

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dcm.converters import ConvertOptions, from_onnx  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402


def _conv_model(w, bias, x_shape, attrs):
    inits = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(bias, "b")] if bias is not None else [])
    node = helper.make_node("Conv", ["x", "w"] + (["b"] if bias is not None else []), ["y"], **attrs)
    g = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _check(x_shape, c_out, attrs, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((c_out, x_shape[1], 3, 3)).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32) if bias else None
    x = rng.standard_normal(x_shape).astype(np.float32)
    m = _conv_model(w, b, x_shape, attrs)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)), kernels="dense")
    assert [k["kernel"] for k in sess.describe()] == ["winograd"]
    got = sess.run(None, {"x": x})[0]
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))


@pytest.fixture
def any_width(monkeypatch):
    """Let narrow test layers take the Winograd path (normally only 32+ channels do)."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)


@pytest.mark.parametrize("x_shape,attrs", [
    ([1, 3, 8, 8], {"pads": [1, 1, 1, 1]}),
    ([2, 3, 9, 7], {}),  # odd sizes: the last tile row and column hang over the edge
    ([2, 4, 5, 6], {"pads": [0, 2, 1, 0]}),  # asymmetric
    ([1, 2, 3, 3], {"pads": [3, 3, 3, 3]}),  # padding larger than the kernel
    ([3, 2, 7, 4], {"auto_pad": "SAME_UPPER"}),
    ([1, 2, 6, 9], {"auto_pad": "SAME_LOWER"}),
    ([1, 2, 3, 3], {}),  # one output pixel
])
def test_matches_onnxruntime(any_width, x_shape, attrs):
    _check(x_shape, 5, attrs)


def test_without_bias(any_width):
    _check([2, 3, 6, 6], 4, {"pads": [1, 1, 1, 1]}, bias=False)


def _direct(x, wt, bias, begin, end, relu):
    """float64 conv3x3 as a sum over the nine kernel offsets, plus bias, then the ReLU if asked."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (begin[0], end[0]), (begin[1], end[1])))
    oh, ow = xp.shape[2] - 2, xp.shape[3] - 2
    ref = sum(np.einsum("nchw,kc->nkhw", xp[:, :, i : i + oh, j : j + ow], wt[:, :, i, j])
              for i in range(3) for j in range(3)) + bias
    return np.maximum(ref, 0) if relu else ref


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 6), k=st.integers(1, 6), h=st.integers(1, 30), w=st.integers(1, 9),
       pads=st.lists(st.integers(0, 12), min_size=4, max_size=4), band_tiles=st.sampled_from([1, 5, 40, 512]),
       compiled=st.sampled_from(["avx512", "avx2", "portable", None]), threads=st.sampled_from([1, 2]), relu=st.booleans(),
       tile=st.sampled_from([2, 4]))
def test_any_shape_matches_direct_convolution(n, c, k, h, w, pads, band_tiles, compiled, threads, relu, tile):
    """Every size, padding and band split against a float64 sum over the nine kernel offsets, with the
    compiled kernel (F(2x2, 3x3) or F(4x4, 3x3); AVX-512, whose products run on the packed GEMM, AVX2
    or portable C, both on sgemm; split over 2 threads or not) and with numpy's (F(2x2) only)."""
    if compiled and native.winograd_conv is None or tile == 4 and not compiled:
        return
    begin, end = pads[:2], pads[2:]
    if h + begin[0] + end[0] < 3 or w + begin[1] + end[1] < 3:
        return
    rng = np.random.default_rng(n * 1000 + c * 100 + h * 10 + w)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((k, c, 3, 3)).astype(np.float32)
    bias = rng.standard_normal((1, k, 1, 1)).astype(np.float32)
    ref = _direct(x, wt, bias, begin, end, relu)
    u = winograd.transform_weight(wt, tile)
    saved = winograd.BAND_TILES, winograd.NATIVE_BAND_TILES, native.winograd_conv
    winograd.BAND_TILES = band_tiles  # bands of one tile row, some all padding
    winograd.NATIVE_BAND_TILES = band_tiles  # bands of samples x tile rows (one band: split phases)
    if not compiled:
        native.winograd_conv = None
    simd = native.set_simd(compiled != "portable") if compiled else None
    wide = native.set_avx512(compiled == "avx512") if compiled else None
    try:
        got = winograd.conv3x3(x, u, begin, end, bias, relu, threads, tile)
    finally:
        if compiled:
            native.set_simd(simd)
            native.set_avx512(wide)
        winograd.BAND_TILES, winograd.NATIVE_BAND_TILES, native.winograd_conv = saved
    # F(4x4)'s transforms multiply by up to 8 and its G holds 1/24: a few times F(2x2)'s rounding
    np.testing.assert_allclose(got, ref, rtol=1e-5 * tile, atol=1e-5 * tile * float(np.abs(ref).max()))


def test_weight_takes_f4_where_the_planes_have_enough_tiles():
    """WinogradWeight: F(2x2)'s U on small planes; F(4x4)'s, recovered from it, once a call takes it
    (uses_f4); both give the direct convolution's values."""
    if native.winograd_conv is None:
        return
    rng = np.random.default_rng(7)
    wt = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)
    weight = winograd.WinogradWeight(wt)
    for size, f4 in ((7, False), (30, True)):
        x = rng.standard_normal((1, 5, size, size)).astype(np.float32)
        xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
        ref = sum(np.einsum("nchw,kc->nkhw", xp[:, :, i : i + size, j : j + size], wt[:, :, i, j])
                  for i in range(3) for j in range(3))
        got = weight.conv(x, [1, 1], [1, 1], None, False, 1)
        assert (weight.u4 is not None) == f4
        np.testing.assert_allclose(got, ref, rtol=4e-5, atol=4e-5 * float(np.abs(ref).max()))
    np.testing.assert_allclose(weight.u4, winograd.transform_weight(wt, 4), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n, size, f4", [
    (1, 7, False), (1, 14, False),  # 4 tiles; 16 tiles covering 16x16 outputs for 14x14
    (1, 16, True), (1, 20, True), (4, 7, True),  # 16-25 tiles, as many outputs as F(2x2)'s cover
    (1, 30, True), (8, 7, True), (3, 14, True),  # 48+ tiles: whatever their waste
])
def test_f4_where_its_tiles_pay(n, size, f4):
    assert winograd.uses_f4(n, size, size) is f4


def test_chosen_only_for_wide_dense_3x3_stride_1():
    ok = dict(kernel=(3, 3), strides=(1, 1), dilations=(1, 1), group=1, channels_in=128, channels_out=256)
    assert winograd.eligible(**ok)
    for change in [dict(kernel=(5, 5)), dict(strides=(2, 2)), dict(dilations=(2, 2)), dict(group=2),
                   dict(channels_in=16), dict(channels_out=24)]:
        assert not winograd.eligible(**{**ok, **change}), change


def test_wide_layer_runs_winograd_dense_and_direct_or_im2col_sparse(monkeypatch):
    _check([1, 128, 6, 5], 128, {"pads": [1, 1, 1, 1]})
    rng = np.random.default_rng(1)
    m = _conv_model(rng.standard_normal((128, 128, 3, 3)).astype(np.float32), None, [1, 128, 4, 4], {})
    model = from_onnx(m, ConvertOptions(exact=True))
    if native.SparseConv is not None:
        assert [k["kernel"] for k in InferenceSession(model, kernels="sparse").describe()] == ["direct"]
    monkeypatch.setattr(native, "SparseConv", None)
    assert [k["kernel"] for k in InferenceSession(model, kernels="sparse").describe()] == ["sparse"]


@pytest.mark.skipif(native.winograd_conv is None, reason="this build has no compiled Winograd")
@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("threads, band_tiles", [(1, 512), (2, 100000)])  # bands, and one band's split phases
def test_packed_products_match_sgemms(tile, threads, band_tiles):
    """On AVX-512 the products run on the packed GEMM, V packed per product: against sgemm's on a layer
    of several panels and row blocks, none of them whole (70 channels in, 40 out, 37 x 45 outputs)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 70, 37, 45)).astype(np.float32)
    u = winograd.transform_weight(rng.standard_normal((40, 70, 3, 3)).astype(np.float32), tile)
    saved = winograd.NATIVE_BAND_TILES
    winograd.NATIVE_BAND_TILES = band_tiles
    try:
        got = {}
        for wide in (True, False):
            previous = native.set_avx512(wide)
            try:
                got[wide] = winograd.conv3x3(x, u, [1, 1], [1, 1], None, False, threads, tile)
            finally:
                native.set_avx512(previous)
    finally:
        winograd.NATIVE_BAND_TILES = saved
    np.testing.assert_allclose(got[True], got[False], rtol=1e-4, atol=1e-4 * float(np.abs(got[False]).max()))


@pytest.mark.skipif(native.winograd_conv is None, reason="built without the native kernels")
@pytest.mark.parametrize("width", [45, 61, 64, 66, 130])  # 12 tiles a row, 16 (the last part-filled), 16, 17, 33
@pytest.mark.parametrize("relu", [False, True])
def test_f4_transforms_in_runs_of_tiles(width, relu):
    """F(4x4, 3x3)'s transforms take a row of tiles 16 at a time on AVX-512, 8 on AVX2, the last run
    masked: both against the float64 sum, a NaN input spreading to the same outputs, those of the
    tiles that read it."""
    rng = np.random.default_rng(width)
    x = rng.standard_normal((2, 8, 9, width)).astype(np.float32)
    x[1, 3, 4, width - 2] = np.nan
    wt = rng.standard_normal((6, 8, 3, 3)).astype(np.float32)
    bias = rng.standard_normal((1, 6, 1, 1)).astype(np.float32)
    u = winograd.transform_weight(wt, 4)
    got = {}
    for wide in (True, False):
        previous = native.set_avx512(wide)
        try:
            got[wide] = winograd.conv3x3(x, u, [1, 1], [1, 1], bias, relu, 1, 4)
        finally:
            native.set_avx512(previous)
    np.testing.assert_array_equal(np.isnan(got[True]), np.isnan(got[False]))
    assert np.isnan(got[True][1]).any() and not np.isnan(got[True][0]).any()
    with np.errstate(invalid="ignore"):
        ref = _direct(x, wt, bias, [1, 1], [1, 1], relu)
    finite = ~np.isnan(got[False])
    np.testing.assert_allclose(got[True][finite], ref[finite], rtol=4e-5, atol=4e-5 * float(np.abs(ref[finite]).max()))
