"""The compiled interpolation of the last two axes (_resize.c, native.resize2d) against Resize's numpy
passes: every mode and coordinate transform on up- and downscales, a leading axis resized too,
the AVX2 and the portable paths, Inf and NaN; malformed calls are refused."""
import contextlib

import numpy as np
import pytest

from dcm.converters import ConvertOptions, from_onnx
from dcm.runtime import InferenceSession
from dcm.runtime.cpu import native
from tests.runtime.opcheck import one_node

pytestmark = pytest.mark.skipif(native.resize2d is None, reason="built without _resize.c")


@contextlib.contextmanager
def _simd(allowed: bool):
    previous = native.set_resize_simd(allowed)
    try:
        yield
    finally:
        native.set_resize_simd(previous)


def _sessions(attrs, x_shape, scales):
    model = one_node("Resize", {"x": np.zeros(x_shape, np.float32)}, attrs, opset=19,
                     consts={"roi": np.zeros(0, np.float32), "scales": np.asarray(scales, np.float32)},
                     order=["x", "roi", "scales"])
    model = from_onnx(model, ConvertOptions(exact=True))
    compiled = InferenceSession(model)
    saved = native.resize2d
    native.resize2d = None  # kernels read it at load: this session runs the numpy passes
    try:
        reference = InferenceSession(model)
    finally:
        native.resize2d = saved
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
    with _simd(simd):
        got = compiled.run(None, {"x": x})[0]
    want = reference.run(None, {"x": x})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


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
