"""pool2d's MaxPool 3x3 stride 2 (ResNet's, after the stem), which the AVX-512 path computes straight
from the input rows: against numpy's windows with -inf padding on every pad combination up to the
kernel, planes narrower than a vector and with partial vectors, NaN and infinities at the borders,
batches and a split over threads; the portable path gives the same."""
import numpy as np
import pytest

from dcm.runtime.cpu import native
from dcm.runtime.cpu.windows import reduce_windows
from tests.runtime.switches import switched

pytestmark = pytest.mark.skipif(native.pool2d is None, reason="built without the native kernels")


def _max_pool(x, pads, threads=1):
    begin, end = list(pads[:2]), list(pads[2:])
    ref = reduce_windows(x, (3, 3), (2, 2), (1, 1), begin, end, np.maximum, -np.inf)
    y = np.full(ref.shape, 7, np.float32)
    native.pool2d(x, y, x.shape, (3, 3), (2, 2), (1, 1), tuple(pads), None, threads)
    return y, ref


@pytest.mark.parametrize("simd", [True, False])
@pytest.mark.parametrize("h, w", [(3, 3), (4, 1), (5, 7), (8, 31), (9, 32), (7, 33), (6, 65), (11, 112)])
def test_matches_numpy_with_nan_and_infinities(simd, h, w):
    rng = np.random.default_rng(h * 100 + w)
    x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    x[0, 0, 0, 0], x[0, 1, h - 1, w - 1], x[1, 2, rng.integers(h), rng.integers(w)] = np.nan, np.nan, np.nan
    x[1, 0, 0, w - 1], x[1, 1, h - 1, 0] = -np.inf, np.inf
    x[0, 2] = -np.inf  # a plane of -inf: every output -inf
    with switched(native.set_simd, simd):
        for pads in np.ndindex(2, 2, 3, 3):  # top, left up to 1; bottom, right up to 2 (ceil_mode's extra pad)
            if h + pads[0] + pads[2] < 3 or w + pads[1] + pads[3] < 3:
                continue
            y, ref = _max_pool(x, pads)
            np.testing.assert_array_equal(y, ref, err_msg=str(pads))


def test_threads_and_batches_give_numpy_result():
    x = np.random.default_rng(1).standard_normal((3, 16, 112, 112)).astype(np.float32)
    x[2, 15, 111, 111] = np.nan
    y, ref = _max_pool(x, (1, 1, 1, 1), threads=2)
    np.testing.assert_array_equal(y, ref)
