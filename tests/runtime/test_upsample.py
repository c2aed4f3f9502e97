"""The compiled kernels of _upsample.c against the numpy code they replace: Resize's interpolation of
the last two axes (native.resize2d) in every mode and coordinate transform, up- and downscaled, a
leading axis resized too; ConvTranspose's col2im (native.col2im2d) over strides, dilations, pads,
output_padding, output_shape, groups and batch; the AVX2 and the portable paths, Inf and NaN;
malformed calls are refused."""
from unittest import mock

import numpy as np
import pytest

from dcm.converters import ConvertOptions, from_onnx
from dcm.runtime import InferenceSession
from dcm.runtime.cpu import native
from tests.runtime.opcheck import one_node
from tests.runtime.switches import switched

pytestmark = pytest.mark.skipif(native.resize2d is None, reason="built without _upsample.c")


def _sessions(attrs, x_shape, scales):
    model = one_node("Resize", {"x": np.zeros(x_shape, np.float32)}, attrs, opset=19,
                     consts={"roi": np.zeros(0, np.float32), "scales": np.asarray(scales, np.float32)},
                     order=["x", "roi", "scales"])
    model = from_onnx(model, ConvertOptions(exact=True))
    compiled = InferenceSession(model)
    with mock.patch.object(native, "resize2d", None):  # kernels read it at load: the numpy passes
        reference = InferenceSession(model)
    return compiled, reference


MODES = [({"mode": "linear", "coordinate_transformation_mode": t}, 1e-6)
         for t in ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric")]
MODES += [({"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": m}, 0)
          for m in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")]
MODES += [({"mode": "cubic"}, 1e-5), ({"mode": "cubic", "exclude_outside": 1, "cubic_coeff_a": -0.5}, 1e-5),
          ({"mode": "linear", "antialias": 1}, 1e-6), ({"mode": "cubic", "antialias": 1}, 1e-5)]


@pytest.mark.parametrize("simd", [True, False], ids=["avx2", "portable"])
@pytest.mark.parametrize("x_shape, scales", [((1, 3, 9, 13), (1, 1, 2, 2)), ((2, 2, 17, 10), (1, 1, 0.5, 0.7)),
                                             ((1, 2, 5, 19), (1, 1, 1, 2.5)), ((3, 4, 6), (1, 1.5, 1)),
                                             ((2, 3, 6, 5), (1, 2, 3, 1.5))])
@pytest.mark.parametrize("attrs, tol", MODES, ids=["-".join(map(str, a.values())) for a, _ in MODES])
def test_compiled_matches_numpy(attrs, tol, x_shape, scales, simd):
    compiled, reference = _sessions(attrs, x_shape, scales)
    x = np.random.default_rng(0).standard_normal(x_shape).astype(np.float32)
    with switched(native.set_upsample_simd, simd):
        got = compiled.run(None, {"x": x})[0]
    want = reference.run(None, {"x": x})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("attrs", [{"mode": "nearest"}, {"mode": "linear"}], ids=["nearest", "linear"])
def test_threads_and_repeated_rows(attrs):
    """A large call splits its planes over the native pool; nearest's repeated output rows are copies of
    the row before and its columns are gathered from the input rows themselves: 1-3 threads, the same
    bits, and the numpy passes' result."""
    compiled, reference = _sessions(attrs, (2, 24, 30, 30), (1, 1, 2, 2))  # 172,800 outputs: past the GIL limit
    x = np.random.default_rng(2).standard_normal((2, 24, 30, 30)).astype(np.float32)
    x[1, 3, 4, 5] = np.nan
    want = reference.run(None, {"x": x})[0]
    one = compiled.run(None, {"x": x})[0]
    np.testing.assert_allclose(one, want, rtol=1e-6, atol=1e-6)
    for threads in (2, 3):
        split = InferenceSession(compiled.model, threads=threads)
        np.testing.assert_array_equal(split.run(None, {"x": x})[0], one)


def test_the_kept_plan_follows_run_time_sizes_and_shapes():
    """The compiled call's plan is kept per input shape and sizes values: sizes fed at run time that change
    from run to run, and a new input shape, each get their own (the numpy passes' result every time)."""
    onnx_model = one_node("Resize", {"x": np.zeros((1, 2, 6, 7), np.float32), "sizes": np.zeros(4, np.int64)},
                          {"mode": "nearest"}, opset=19, order=["x", "", "", "sizes"])
    for axis, dim in enumerate(onnx_model.graph.input[0].type.tensor_type.shape.dim):
        dim.dim_param = f"d{axis}"  # any input shape
    model = from_onnx(onnx_model, ConvertOptions(exact=True))
    compiled = InferenceSession(model)
    with mock.patch.object(native, "resize2d", None):
        reference = InferenceSession(model)
    rng = np.random.default_rng(4)
    for shape, sizes in [((1, 2, 6, 7), (1, 2, 12, 14)), ((1, 2, 6, 7), (1, 2, 9, 5)), ((1, 2, 6, 7), (1, 2, 12, 14)),
                         ((2, 2, 5, 8), (2, 2, 12, 14))]:
        feeds = {"x": rng.standard_normal(shape).astype(np.float32), "sizes": np.asarray(sizes, np.int64)}
        got = compiled.run(None, feeds)[0]
        assert got.shape == sizes
        np.testing.assert_array_equal(got, reference.run(None, feeds)[0])


def test_inf_and_nan_propagate_like_the_numpy_passes():
    compiled, reference = _sessions({"mode": "linear"}, (1, 1, 6, 7), (1, 1, 2, 2))
    x = np.random.default_rng(1).standard_normal((1, 1, 6, 7)).astype(np.float32)
    x[0, 0, 2, 3], x[0, 0, 4, 0] = np.inf, np.nan
    got, want = compiled.run(None, {"x": x})[0], reference.run(None, {"x": x})[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-6)


def _taps(out, size, taps=2):
    return np.zeros((out, taps), np.int32) + np.arange(taps, dtype=np.int32) % size, np.full((out, taps), 0.5,
                                                                                           np.float32)


def test_a_small_call_matches_a_direct_sum():
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    y = np.empty((1, 2, 3), np.float32)
    ri, rw = np.array([[0, 2], [1, 1]], np.int32), np.array([[0.25, 0.75], [1, 0]], np.float32)
    ci, cw = np.array([[3], [0], [1]], np.int32), np.ones((3, 1), np.float32)
    native.resize2d(x, y, ri, rw, ci, cw)
    rows = np.stack([0.25 * x[0, 0] + 0.75 * x[0, 2], x[0, 1]])
    np.testing.assert_allclose(y[0], rows[:, [3, 0, 1]])


@pytest.mark.parametrize("change, message", [
    ({"x": np.zeros((2, 3), np.float32)}, "x and y must be"),
    ({"y": np.zeros((2, 4, 5), np.float32)}, "x and y must be"),
    ({"row_indices": np.full((4, 2), 3, np.int32)}, "rows: index 3 at entry 0 is outside 0..2"),
    ({"row_indices": np.full((4, 2), -1, np.int32)}, "rows: index -1"),
    ({"col_indices": np.full((5, 2), 4, np.int32)}, "columns: index 4 at entry 0 is outside 0..3"),
    ({"row_weights": np.zeros((4, 3), np.float32)}, "rows: indices and weights must both be \\[4, taps >= 1\\]"),
    ({"col_indices": np.zeros((5, 0), np.int32), "col_weights": np.zeros((5, 0), np.float32)}, "columns: indices"),
    ({"col_indices": np.zeros((6, 2), np.int32)}, "columns: indices and weights must both be \\[5"),
])
def test_malformed_calls_are_refused(change, message):
    (ri, rw), (ci, cw) = _taps(4, 3), _taps(5, 4)
    args = {"x": np.zeros((1, 3, 4), np.float32), "y": np.zeros((1, 4, 5), np.float32), "row_indices": ri,
            "row_weights": rw, "col_indices": ci, "col_weights": cw}
    args.update(change)
    with pytest.raises(ValueError, match=message):
        native.resize2d(**args)


def test_wrong_types_are_refused():
    (ri, rw), (ci, cw) = _taps(4, 3), _taps(5, 4)
    with pytest.raises(TypeError, match="rows"):
        native.resize2d(np.zeros((1, 3, 4), np.float32), np.zeros((1, 4, 5), np.float32), ri.astype(np.int64), rw,
                        ci, cw)
    with pytest.raises(TypeError, match="y"):
        native.resize2d(np.zeros((1, 3, 4), np.float32), np.zeros((1, 4, 5), np.float64), ri, rw, ci, cw)


CONV_T = [({"strides": [2, 2]}, (2, 4, 5, 6), (4, 3, 2, 2)),
          ({"strides": [2, 3], "output_padding": [1, 2], "dilations": [2, 1], "pads": [1, 0, 2, 1], "group": 2},
           (2, 4, 5, 6), (4, 3, 3, 2)),
          ({"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, (1, 3, 7, 7), (3, 5, 3, 3)),
          ({"strides": [1, 1]}, (1, 2, 4, 5), (2, 3, 3, 3)),
          ({"strides": [2, 2], "auto_pad": "SAME_UPPER"}, (1, 2, 5, 4), (2, 2, 3, 3)),
          ({"strides": [2, 2], "auto_pad": "SAME_LOWER"}, (1, 2, 5, 4), (2, 2, 3, 3)),
          ({"strides": [3, 2], "output_shape": [12, 13]}, (1, 2, 3, 4), (2, 2, 2, 3)),  # zeros past the full output
          ({"strides": [2, 2], "pads": [3, 2, 3, 2]}, (1, 2, 6, 6), (2, 2, 4, 4)),
          ({"strides": [2, 2]}, (2, 3, 4, 19), (3, 2, 2, 2)),  # stride = kernel: vectors and a tail
          ({"strides": [3, 3]}, (1, 2, 5, 9), (2, 2, 3, 3))]


@pytest.mark.parametrize("simd", [True, False], ids=["avx2", "portable"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("attrs, x_shape, w_shape", CONV_T)
def test_col2im_matches_numpy(attrs, x_shape, w_shape, bias, simd):
    rng = np.random.default_rng(2)
    consts = {"w": rng.standard_normal(w_shape).astype(np.float32)}
    if bias:
        consts["b"] = rng.standard_normal(w_shape[1] * attrs.get("group", 1)).astype(np.float32)
    model = from_onnx(one_node("ConvTranspose", {"x": np.zeros(x_shape, np.float32)}, attrs, opset=17,
                               consts=consts), ConvertOptions(exact=True))
    sess = InferenceSession(model)
    x = rng.standard_normal(x_shape).astype(np.float32)
    x[0, 0, 1, 1] = np.inf
    with switched(native.set_upsample_simd, simd):
        got = sess.run(None, {"x": x})[0]
    with mock.patch.object(native, "col2im2d", None):  # read at each call: the numpy col2im
        want = sess.run(None, {"x": x})[0]
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("strides, kernel", [((2, 2), (2, 2)), ((1, 1), (3, 3))], ids=["disjoint", "overlapping"])
def test_col2im_threads_give_the_serial_result(strides, kernel):
    """Output planes split over the native pool (past the size that releases the GIL) give one
    thread's values bit for bit."""
    h, w = 64, 67  # 48 planes of 4-17k values: several ranges of 2^17 values
    cols = np.random.default_rng(3).standard_normal((24, *kernel, 2, h, w)).astype(np.float32)
    out = [(d - 1) * s + k for d, s, k in zip((h, w), strides, kernel)]
    serial, split = np.empty((2, 24, *out), np.float32), np.empty((2, 24, *out), np.float32)
    bias = np.arange(24, dtype=np.float32)
    native.col2im2d(cols, serial, strides, (1, 1), (0, 0), bias, 1)
    native.col2im2d(cols, split, strides, (1, 1), (0, 0), bias, 2)
    np.testing.assert_array_equal(split, serial)


def _col2im_args(**change):
    args = {"cols": np.ones((2, 2, 2, 1, 3, 3), np.float32), "y": np.zeros((1, 2, 6, 6), np.float32),
            "strides": (2, 2), "dilations": (1, 1), "begin": (0, 0), "bias": None}
    args.update(change)
    return args


@pytest.mark.parametrize("change, message", [
    ({"cols": np.ones((2, 2, 2, 3, 3), np.float32)}, "cols must be"),
    ({"y": np.zeros((2, 2, 6, 6), np.float32)}, "cols must be"),
    ({"y": np.zeros((1, 3, 6, 6), np.float32)}, "cols must be"),
    ({"strides": (0, 2)}, "strides must be two values in 1..2"),
    ({"strides": (2, 2**31)}, "strides must be"),
    ({"dilations": (1, -1)}, "dilations must be"),
    ({"begin": (-1, 0)}, "begin must be two values in 0..2"),
    ({"bias": np.ones(3, np.float32)}, "bias must have 2 values"),
])
def test_col2im_refuses_malformed_calls(change, message):
    with pytest.raises(ValueError, match=message):
        native.col2im2d(**_col2im_args(**change))


def test_col2im_places_every_tap():
    """Taps of a 2x2/2 transposed convolution tile the output; a crop shifts them."""
    cols = np.arange(1, 17, dtype=np.float32).reshape(1, 2, 2, 1, 2, 2)
    y = np.empty((1, 1, 4, 4), np.float32)
    native.col2im2d(cols, y, (2, 2), (1, 1), (0, 0), np.array([0.5], np.float32))
    want = cols[0, :, :, 0].transpose(2, 0, 3, 1).reshape(4, 4) + 0.5
    np.testing.assert_array_equal(y[0, 0], want)
    cropped = np.empty((1, 1, 3, 3), np.float32)
    native.col2im2d(cols, cropped, (2, 2), (1, 1), (1, 1))
    np.testing.assert_array_equal(cropped[0, 0], want[1:, 1:] - 0.5)
