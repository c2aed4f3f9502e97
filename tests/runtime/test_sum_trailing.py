"""reduce.sum_trailing: the BLAS sum over a float32 tensor's last axes (ReduceSum, ReduceMean and
GlobalAveragePool use it), against float64 sums, and the cases it leaves to numpy."""
import numpy as np
import pytest

from dcm.runtime.cpu.reduce import BLAS_SUM_MAX, sum_trailing


@pytest.mark.parametrize("shape,axes", [((1, 96, 56, 56), (2, 3)), ((3, 7, 40), (2,)), ((2, 3, 4, 5), (1, 2, 3)),
                                        ((4, 16), (1,))])
@pytest.mark.parametrize("keep", [True, False])
def test_matches_float64_sums(shape, axes, keep):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    got = sum_trailing(x, axes, keep)
    want = x.astype(np.float64).sum(axis=axes, keepdims=keep)
    assert got is not None and got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_inf_and_nan_reach_their_rows_as_in_a_sum():
    x = np.ones((4, 32), np.float32)
    x[1, 3], x[2, 0], x[3, [1, 2]] = np.inf, np.nan, [np.inf, -np.inf]
    with np.errstate(invalid="ignore"):  # inf - inf, as a session runs it (and as np.sum warns too)
        got = sum_trailing(x, (1,), False)
    assert got[0] == 32 and got[1] == np.inf and np.isnan(got[2]) and np.isnan(got[3])


@pytest.mark.parametrize("x,axes", [
    (np.ones((4, 32), np.float16), (1,)),                  # other dtypes keep numpy's sum
    (np.ones((32, 4), np.float32), (0,)),                  # not the last axes
    (np.ones((4, 64), np.float32)[:, ::2], (1,)),          # not contiguous
    (np.ones((4, 8), np.float32), (1,)),                   # rows too short to pay
    (np.ones((2, BLAS_SUM_MAX + 1), np.float32), (1,)),    # rows past the accuracy bound
    (np.ones((0, 32), np.float32), (1,)),                  # empty
    (np.ones((4, 32), np.float32), None),                  # every axis
])
def test_leaves_other_cases_to_numpy(x, axes):
    assert sum_trailing(x, axes, True) is None
