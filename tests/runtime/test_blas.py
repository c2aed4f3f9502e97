"""dcm/runtime/cpu/blas.py: a session keeps numpy's BLAS pool at one thread and splits large products
over its own threads (the native gemm, _gemm.c; tests/runtime/test_gemm.py tests it directly)."""
import os

import numpy as np
import pytest

pytest.importorskip("threadpoolctl")
from threadpoolctl import threadpool_limits  # noqa: E402

from dcm.format.model import Model, Node, ValueInfo  # noqa: E402
from dcm.encoder.codec import encode_raw  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from dcm.runtime.cpu import blas, native  # noqa: E402
from tests.runtime.switches import switched  # noqa: E402


def _dense_fc() -> Model:
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    return Model([ValueInfo("x", "float32", ["batch", 64])], [ValueInfo("y", "float32", ["batch", 64])],
                 [Node("Gemm", ["x", "w"], ["y"], {"transB": 1}, "fc")], {"w": encode_raw(w, "w")})


def test_each_run_keeps_the_blas_pool_at_one_thread():
    """The session's threads split large products themselves (blas.matmul); BLAS's own pool stays at
    one thread, even after code outside the session changed it."""
    if not blas.current():
        pytest.skip("no BLAS library found by threadpoolctl")
    x = np.ones((8, 64), np.float32)
    two = InferenceSession(_dense_fc(), threads=2)
    with threadpool_limits(3):
        two.run(None, {"x": x})
        assert set(blas.current()) == {1}


@pytest.mark.parametrize("a_shape, b_shape", [((300, 64), (64, 90)), ((70, 100), (100, 2000)), ((40, 50), (50, 60)),
                                              ((2, 500), (500, 900)), ((3, 1, 40, 50), (4, 50, 60)),
                                              ((1, 1, 200, 8), (8, 30))])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_split_matmul_matches_numpy(a_shape, b_shape, threads, monkeypatch):
    """Rows cut, columns cut, too small to cut, a broadcast stack of products, a stack of one; the
    native gemm takes every one of them from two threads."""
    monkeypatch.setattr(blas, "SPLIT_MIN_MACS", 1)  # split even the small ones
    calls = _count_gemm_calls(monkeypatch)
    rng = np.random.default_rng(len(a_shape))
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = np.swapaxes(rng.standard_normal(b_shape[:-2] + b_shape[:-3:-1]).astype(np.float32), -1, -2)  # strided
    want = np.matmul(a, b)
    np.testing.assert_allclose(blas.matmul(a, b, threads), want, rtol=1e-5, atol=1e-4)
    out = np.empty_like(want)
    assert blas.matmul(a, b, threads, out=out) is out
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)
    assert len(calls) == (2 if threads > 1 and native.gemm is not None else 0)
    v = a.reshape(-1, a.shape[-1])[0]
    np.testing.assert_array_equal(blas.matmul(v, b, threads), np.matmul(v, b))  # a vector: numpy's own call
    row, column = v[None], b[..., :1]  # one row, one column: numpy's matrix-vector kernel, not split
    np.testing.assert_array_equal(blas.matmul(row, b, threads), np.matmul(row, b))
    np.testing.assert_array_equal(blas.matmul(a, column, threads), np.matmul(a, column))
    assert len(calls) == (2 if threads > 1 and native.gemm is not None else 0)


def _count_gemm_calls(monkeypatch) -> list:
    calls = []
    if native.gemm is not None:
        gemm = native.gemm
        monkeypatch.setattr(native, "gemm", lambda *args: calls.append(args) or gemm(*args))
    return calls


def test_matmul_leaves_to_numpy_what_the_native_gemm_does_not_take(monkeypatch):
    """Small products, float64, and layouts sgemm cannot read (reversed rows, out overlapping an
    input) all get numpy's result; shapes that do not match get numpy's error."""
    monkeypatch.setattr(blas, "SPLIT_MIN_MACS", 1 << 12)
    calls = _count_gemm_calls(monkeypatch)
    a, b = np.ones((8, 8), np.float32), np.ones((8, 8), np.float32)
    np.testing.assert_array_equal(blas.matmul(a, b, 2), a @ b)
    assert not calls  # 512 multiply-adds: one numpy call
    big = np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 4096
    np.testing.assert_allclose(blas.matmul(big.astype(np.float64), big, 2), big.astype(np.float64) @ big)
    np.testing.assert_allclose(blas.matmul(big[::-1], big, 2), big[::-1] @ big, rtol=1e-6)
    shared = np.concatenate([big, big], axis=1)
    want = shared[:, :64] @ big
    np.testing.assert_allclose(blas.matmul(shared[:, :64], big, 2, out=shared[:, 32:96]), want, rtol=1e-6)
    with pytest.raises(ValueError, match="matmul"):
        blas.matmul(big, big[:5], 2)


def test_default_threads_are_the_cores_the_process_may_use(monkeypatch):
    if hasattr(os, "sched_getaffinity"):
        assert blas.cores() == len(os.sched_getaffinity(0))
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})  # as under taskset -c 0
    else:
        monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert blas.cores() == 1
    assert InferenceSession(_dense_fc())._ctx.threads == 1
    assert InferenceSession(_dense_fc(), threads=3)._ctx.threads == 3


def test_runs_avx2_only_needs_the_packed_gemm_on_avx512(monkeypatch):
    """The packed GEMM replaces OpenBLAS only where it runs its AVX-512 path; with it off, never."""
    monkeypatch.setattr(native, "packed_simd", lambda: None)
    assert not blas.runs_avx2_only()


def _layer(node: Node, inputs: list[ValueInfo], tensors: dict) -> Model:
    return Model(inputs, [ValueInfo("y", "float32", None)], [node], tensors)


def test_nchw_1x1_layers_and_products_of_run_time_inputs_use_the_session_threads(monkeypatch):
    """With BLAS held at one thread, the products a session runs through numpy are its own threads'
    work: a 1x1 layer's NCHW product (where the compiled 1x1 kernel does not run, as MobileNetV2's on a
    CPU without AVX-512), Gemm and MatMul of two run-time inputs. Each goes to the native gemm on 2
    threads and gives numpy's result."""
    if native.gemm is None:
        pytest.skip("built without the compiled kernels")
    rng = np.random.default_rng(4)
    w = rng.standard_normal((64, 64, 1, 1)).astype(np.float32)
    conv = _layer(Node("Conv", ["x", "w"], ["y"], {}, "pointwise"), [ValueInfo("x", "float32", [1, 64, 32, 32])],
                  {"w": encode_raw(w, "w")})
    a_info, b_info = ValueInfo("a", "float32", [2, 128, 96]), ValueInfo("b", "float32", [2, 96, 128])
    matmul = _layer(Node("MatMul", ["a", "b"], ["y"], {}, "mm"), [a_info, b_info], {})
    gemm = _layer(Node("Gemm", ["a", "b"], ["y"], {"transB": 1}, "gemm"),
                  [ValueInfo("a", "float32", [128, 96]), ValueInfo("b", "float32", [128, 96])], {})
    x = rng.standard_normal((1, 64, 32, 32)).astype(np.float32)
    a, b = rng.standard_normal((2, 128, 96)).astype(np.float32), rng.standard_normal((2, 96, 128)).astype(np.float32)
    with switched(native.set_pointconv_simd, False):  # the 1x1 layer's NCHW product, as on such a CPU
        conv_sess = InferenceSession(conv, threads=2)
    for sess, feeds, want in [(conv_sess, {"x": x}, np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x)),
                              (InferenceSession(matmul, threads=2), {"a": a, "b": b}, a @ b),
                              (InferenceSession(gemm, threads=2), {"a": a[0], "b": b[0].T.copy()}, a[0] @ b[0])]:
        calls = _count_gemm_calls(monkeypatch)
        np.testing.assert_allclose(sess.run(None, feeds)[0], want, rtol=1e-4, atol=1e-4)
        assert calls, sess.describe()
