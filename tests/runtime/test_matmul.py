"""WeightMatmul: the batch-1 CSR matvec path, the row-block thread split and scipy's operator agree."""
import numpy as np
import pytest
import scipy.sparse as sp

from dcm.runtime.cpu import matmul
from dcm.runtime.cpu.matmul import WeightMatmul


def _weight(shape=(30, 50), density=0.1, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * (rng.random(shape) < density)).astype(np.float32)


@pytest.mark.parametrize("vector_kernel", [True, False])
def test_batch_one_matches_dense_product(monkeypatch, vector_kernel):
    if not vector_kernel:  # a scipy without the private kernel falls back to ``A @ x``
        monkeypatch.setattr(matmul, "_csr_matvec", None)
    w = _weight()
    mm = WeightMatmul("sparse", w)
    assert mm.vector_ok is vector_kernel
    x = np.random.default_rng(1).standard_normal((1, 50)).astype(np.float32)
    y = mm.right(x)
    assert y.shape == (1, 30) and y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_allclose(y, x @ w.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mm.right(x.T.copy().T), y)  # a non-contiguous row gives the same


def test_vector_path_agrees_with_batched_and_threaded_paths():
    w = _weight((400, 600), 0.9)  # 216k stored weights: split into row blocks over 2 threads
    x = np.random.default_rng(2).standard_normal((3, 600)).astype(np.float32)
    single, split = WeightMatmul("sparse", w), WeightMatmul("sparse", w, threads=2)
    assert len(split.blocks) == 2 and not split.vector_ok
    batched = single.right(x)
    for i in range(3):
        np.testing.assert_allclose(single.right(x[i : i + 1]), batched[i : i + 1], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(split.right(x[i : i + 1]), batched[i : i + 1], rtol=1e-5, atol=1e-5)


def test_float64_input_takes_the_general_path():
    w = _weight()
    x = np.random.default_rng(3).standard_normal((1, 50))
    np.testing.assert_allclose(WeightMatmul("sparse", sp.csr_array(w)).right(x), x @ w.T, rtol=1e-5, atol=1e-6)
