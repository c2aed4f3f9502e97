"""WeightMatmul: the batch-1 paths (native kernel, scipy's CSR matvec, ``A @ x``), the thread splits
and the batched product agree."""
import numpy as np
import pytest
import scipy.sparse as sp

from dcm.runtime.cpu import matmul, native
from dcm.runtime.cpu.matmul import WeightMatmul


def _weight(shape=(30, 50), density=0.1, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * (rng.random(shape) < density)).astype(np.float32)


def _close(y, x, w, bias=0.0, relu=False):
    """y against a float64 product, to float32 rounding of sums of |w x| terms."""
    ref = x.astype(np.float64) @ w.T.astype(np.float64) + bias
    ref = np.maximum(ref, 0) if relu else ref
    scale = np.abs(x.astype(np.float64)) @ np.abs(w.T.astype(np.float64)) + np.abs(bias) + 1
    assert np.all(np.abs(y - ref) <= 1e-6 * scale), np.max(np.abs(y - ref) / scale)


@pytest.mark.parametrize("path", ["native", "matvec", "operator"])
def test_batch_one_matches_dense_product(monkeypatch, path):
    if path != "native":
        monkeypatch.setattr(native, "SparseMatrix", None)
    if path == "operator":  # a scipy without the private kernel falls back to ``A @ x``
        monkeypatch.setattr(matmul, "_csr_matvec", None)
    w = _weight()
    mm = WeightMatmul("sparse", w)
    assert (mm.native is not None) is (path == "native")
    assert mm.vector_ok is (path == "matvec")  # scipy's matvec: only without the native kernel
    x = np.random.default_rng(1).standard_normal((1, 50)).astype(np.float32)
    y = mm.right(x)
    assert y.shape == (1, 30) and y.dtype == np.float32 and y.flags.c_contiguous
    _close(y, x, w)
    np.testing.assert_allclose(mm.right(x.T.copy().T), y)  # a non-contiguous row gives the same


@pytest.mark.parametrize("zeros", [0.0, 0.7])  # 0.7: the native kernel walks the weight by columns
def test_fused_vector_adds_bias_and_clamps(zeros):
    rng = np.random.default_rng(4)
    w = _weight((40, 70), 0.2, seed=5)
    x = rng.standard_normal((1, 70)).astype(np.float32)
    x[rng.random((1, 70)) < zeros] = 0
    bias = rng.standard_normal(40).astype(np.float32)
    mm = WeightMatmul("sparse", w, vectors=True)
    _close(mm.fused_right(x, bias, relu=True), x, w, bias, relu=True)
    _close(mm.fused_right(x, None, relu=False), x, w)
    x3 = np.repeat(x, 3, axis=0) * np.float32([[1], [-2], [0.5]])  # batch 3: the batched kernel
    _close(mm.fused_right(x3, bias, relu=True), x3, w, bias, relu=True)


@pytest.mark.parametrize("compiled, vectors", [(True, True), (True, False), (False, True)])
def test_vector_path_agrees_with_batched_and_threaded_paths(monkeypatch, compiled, vectors):
    """vectors: the CSC copy, in parts of columns at batch 1; without it, CSR rows, split by the kernel."""
    if not compiled:
        monkeypatch.setattr(native, "SparseMatrix", None)
    w = _weight((400, 600), 0.9)  # 216k stored weights: split over 2 threads
    x = np.random.default_rng(2).standard_normal((3, 600)).astype(np.float32)
    x[1, ::2] = 0  # half zeros: the native kernel's column walk
    single = WeightMatmul("sparse", w, vectors=vectors)
    split = WeightMatmul("sparse", w, threads=2, vectors=vectors)
    assert not split.vector_ok
    assert len(split.blocks) == (1 if compiled else 2)  # the native kernel splits by ranges of one matrix
    if compiled:
        assert split.native.forms == (True, vectors)
    batched = single.right(x)
    _close(batched, x, w)
    for i in range(3):
        _close(single.right(x[i : i + 1]), x[i : i + 1], w)
        _close(split.right(x[i : i + 1]), x[i : i + 1], w)
    if compiled:
        bias = np.linspace(-50, 50, 400, dtype=np.float32)
        for rows in (x[:1], x):  # batch 1 (column blocks) and batch 3 (row blocks)
            _close(split.fused_right(rows, bias, relu=True), rows, w, bias, relu=True)


@pytest.mark.parametrize("vectors", [True, False])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("threads", [1, 2])
def test_non_finite_inputs_poison_rows_as_a_dense_product_would(threads, batch, vectors):
    w = _weight((400, 600), 0.9)
    w[:, 7] = 0
    w[3, 7] = 1.5  # only row 3 stores a weight for input 7
    x = np.ones((batch, 600), np.float32)
    x[0, 7] = np.inf
    with np.errstate(all="ignore"):
        y = WeightMatmul("sparse", w, threads=threads, vectors=vectors).right(x)
        assert np.isposinf(y[0, 3]) and np.isnan(np.delete(y[0], 3)).all()
        assert np.isfinite(y[1:]).all()


def test_float64_input_takes_the_general_path():
    w = _weight()
    x = np.random.default_rng(3).standard_normal((1, 50))
    np.testing.assert_allclose(WeightMatmul("sparse", sp.csr_array(w)).right(x), x @ w.T, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 3])
def test_native_products_stay_silent_on_inf_minus_inf(batch):
    """Quiet kernels run without np.errstate (Kernel.quiet): +inf and -inf meeting in one output (in a
    row's sum, or across the batched kernel's column blocks) must give NaN without a numpy warning."""
    import warnings

    if native.SparseMatrix is None:
        pytest.skip("built without the native kernels")
    w = _weight((400, 600), 0.9)
    w[5, 10], w[5, 590] = 1.0, -1.0  # first and last column block
    mm = WeightMatmul("sparse", w, threads=2, vectors=True)
    x = np.ones((batch, 600), np.float32)
    x[:, 10] = x[:, 590] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = mm.fused_right(x)
    assert np.isnan(y[:, 5]).all()


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("rows", [1, 5, 40])
def test_dense_weight_on_the_packed_kernel_or_blas(monkeypatch, packed, rows):
    """A dense fully connected weight runs on the packed kernel where the CPU has AVX-512 (its bias
    and ReLU fused: ``fuses_bias``), else on BLAS (its AVX2 tiles lost to OpenBLAS there); both give
    the dense product."""
    if not packed:
        monkeypatch.setattr(native, "packed_simd", lambda: "avx2")  # as on a CPU without AVX-512
    elif native.packed_simd is None or native.packed_simd() != "avx512":
        pytest.skip("the linear layers take the packed kernel on AVX-512")
    rng = np.random.default_rng(rows)
    w = rng.standard_normal((70, 50)).astype(np.float32)
    mm = WeightMatmul("dense", w, threads=2, prefer="right")
    assert (mm.packed is not None) == packed and mm.fuses_bias == packed
    x, bias = rng.standard_normal((rows, 50)).astype(np.float32), rng.standard_normal(70).astype(np.float32)
    np.testing.assert_allclose(mm.right(x), x @ w.T, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(mm.right(np.asfortranarray(x)), x @ w.T, rtol=1e-5, atol=1e-4)
    if packed:
        np.testing.assert_allclose(mm.fused_right(x, bias, True), np.maximum(x @ w.T + bias, 0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(mm.left(x.T), w @ x.T, rtol=1e-5, atol=1e-4)  # W @ X: BLAS on the kept copy


def test_large_weights_and_single_rows_of_large_weights_stay_on_blas(monkeypatch):
    """Where OpenBLAS measured faster: weights past PACK_MAX_FLOATS are not packed, and one row of x
    (a matrix-vector product) times a weight past PACKED_ONE_ROW_MAX_WEIGHTS goes to BLAS on one
    thread, its bias and ReLU added after; one row of a smaller weight, or on two threads, takes the
    packed kernel."""
    if native.packed_simd is None or native.packed_simd() != "avx512":
        pytest.skip("the linear layers take the packed kernel on AVX-512")
    calls = []
    packed = native.gemm_packed
    monkeypatch.setattr(native, "gemm_packed", lambda *a, **k: calls.append(a) or packed(*a, **k))
    rng = np.random.default_rng(0)
    w, bias = rng.standard_normal((70, 50)).astype(np.float32), rng.standard_normal(70).astype(np.float32)
    x = rng.standard_normal((1, 50)).astype(np.float32)
    want = np.maximum(x @ w.T + bias, 0)
    mm = WeightMatmul("dense", w, prefer="right")
    np.testing.assert_allclose(mm.fused_right(x, bias, True), want, rtol=1e-5, atol=1e-4)
    assert mm.packed is not None and len(calls) == 1  # a small weight: one row on the packed kernel
    calls.clear()
    monkeypatch.setattr(matmul, "PACKED_ONE_ROW_MAX_WEIGHTS", w.size - 1)
    np.testing.assert_allclose(mm.fused_right(x, bias, True), want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(mm.right(x), x @ w.T, rtol=1e-5, atol=1e-4)
    assert not calls
    np.testing.assert_allclose(WeightMatmul("dense", w, threads=2, prefer="right").fused_right(x, bias, True), want,
                               rtol=1e-5, atol=1e-4)
    assert len(calls) == 1  # two threads: the packed kernel, split by panels
    mm.right(np.vstack([x, x]))
    assert len(calls) == 2
    monkeypatch.setattr(matmul, "PACK_MAX_FLOATS", w.size - 1)
    assert WeightMatmul("dense", w, prefer="right").packed is None


def test_describe_says_a_layer_runs_on_the_packed_kernel():
    from dcm.format.model import Model, Node, ValueInfo
    from dcm.encoder.codec import encode_raw
    from dcm.runtime import InferenceSession

    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    model = Model([ValueInfo("x", "float32", ["batch", 64])], [ValueInfo("y", "float32", ["batch", 64])],
                  [Node("Gemm", ["x", "w"], ["y"], {"transB": 1}, "fc")], {"w": encode_raw(w, "w")})
    (info,) = InferenceSession(model).describe()
    assert info.get("packed") == ("avx512" if native.packed_simd is not None and native.packed_simd() == "avx512"
                                  else None)


def test_few_outputs_go_to_blas_from_8_rows():
    """A sparse W of few outputs (outputs x density under SPARSE_MIN_OUTPUT_WEIGHTS) or few inputs
    (MobileNet's 32 -> 96) multiplies 8 or more rows on a dense copy, whose sums and bias match; more
    outputs at the same density, or fewer rows, stay on the sparse kernel (no dense copy)."""
    assert matmul.prefers_dense(0.3, 8, 4800, 160, 24) and matmul.prefers_dense(0.1, 3136, 16384, 256, 64)
    assert not matmul.prefers_dense(0.3, 3136, 25600, 160, 160)  # 48 per input: the sparse kernel
    assert not matmul.prefers_dense(0.3, 3136, 6400, 160, 40)  # 12 per input: ConvNeXt's down-projection
    assert not matmul.prefers_dense(0.3, 1, 4800, 160, 24)  # one row: the load-time choice
    assert matmul.prefers_dense(0.3, 12544, 3072, 32, 96)  # 32 inputs: MobileNet's 32 -> 96
    assert not matmul.prefers_dense(0.3, 3136, 6400, 40, 160)  # 40 inputs: ConvNeXt's first MLP layer
    assert not matmul.prefers_dense(0.2, 784, 25600, 80, 320)  # 80 inputs, 64 per input
    rng = np.random.default_rng(5)
    x, bias = rng.standard_normal((64, 160)).astype(np.float32), rng.standard_normal(40).astype(np.float32)
    for outputs, dense in ((24, True), (160, False)):
        w = _weight((outputs, 160), 0.3, seed=outputs)
        mm = WeightMatmul("sparse", sp.csr_array(w), prefer="right", by_rows=True)
        if mm.native is None:
            pytest.skip("the compiled sparse kernel is not built")
        b = bias[:outputs] if outputs <= 40 else rng.standard_normal(outputs).astype(np.float32)
        _close(mm.fused_right(x, b, True), x, w, b, relu=True)
        assert mm.holds_dense_form == dense
        _close(mm.fused_right(x[:4], b, False), x[:4], w, b)  # 4 rows: few-row rule, dense copy already made


@pytest.mark.parametrize("act", [("gelu", 0.0, 0.0), ("gelu_tanh", 0.0, 0.0), ("clip", -0.5, 0.5), ("erf", 0.0, 0.0)])
def test_fused_right_applies_an_activation_on_every_path(monkeypatch, act):
    """fused_right(..., act): the packed kernel applies the activations it knows in its store (no
    separate pass; one row of a small weight too), the sparse kernel and BLAS (one row of a large weight
    on one thread) in one compiled pass after; every path gives act(x @ W.T + bias)."""
    from tests.runtime.activations import activation

    if native.activate is None:
        pytest.skip("built without the compiled activations")
    rng = np.random.default_rng(3)
    passes = []
    compiled = native.activate
    monkeypatch.setattr(native, "activate", lambda *a, **k: passes.append(a[2]) or compiled(*a, **k))
    reference = {"erf": lambda z: __import__("scipy.special").special.erf(z)}
    large = (matmul.PACKED_ONE_ROW_MAX_WEIGHTS // 512 + 1, 512)  # one row of it: BLAS on one thread
    for mode, density, shape in (("dense", 1.0, (48, 64)), ("dense", 1.0, large), ("sparse", 0.2, (48, 64))):
        w = _weight(shape, density, seed=4)
        bias = rng.standard_normal(shape[0]).astype(np.float32)
        mm = WeightMatmul(mode, w if mode == "dense" else sp.csr_array(w), prefer="right")
        if not mm.fuses_bias:
            pytest.skip("the compiled kernels are not built")
        for rows in (1, 9):
            x = rng.standard_normal((rows, shape[1])).astype(np.float32)
            passes.clear()
            got = mm.fused_right(x, bias, False, act)
            z = x.astype(np.float64) @ w.T.astype(np.float64) + bias
            want = reference[act[0]](z) if act[0] in reference else activation(act, z)
            # float32 sums of 512 products: an error relative to the largest sum
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(z).max())))
            packed = mm.packed is not None and (rows > 1 or w.size <= matmul.PACKED_ONE_ROW_MAX_WEIGHTS)
            assert passes == ([] if packed and act[0] != "erf" else [act[0]])


@pytest.mark.skipif(native.packed_simd is None or native.packed_simd() != "avx512", reason="needs AVX-512")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("out, inp, n", [(40, 576, 70), (7, 3, 1), (300, 64, 1025)])
def test_dense_left_on_the_packed_gemm_matches_numpy(monkeypatch, out, inp, n, threads):
    """Where OpenBLAS runs AVX2 kernels only (blas.runs_avx2_only), a dense W @ x (im2col's product,
    ConvTranspose's) runs on the packed GEMM with x packed: the same product as numpy's."""
    from dcm.runtime.cpu import blas

    monkeypatch.setattr(blas, "runs_avx2_only", lambda: True)
    rng = np.random.default_rng(4)
    w = rng.standard_normal((out, inp)).astype(np.float32)
    x = rng.standard_normal((inp, n)).astype(np.float32)
    got = WeightMatmul("dense", w, threads).left(x)
    np.testing.assert_allclose(got, w.astype(np.float64) @ x, rtol=1e-4, atol=1e-4 * inp ** 0.5)
    strided = WeightMatmul("dense", w, threads).left(np.asfortranarray(x))  # any layout of x: packed anyway
    np.testing.assert_array_equal(strided, got)
