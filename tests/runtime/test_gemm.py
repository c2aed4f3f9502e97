"""dcm/runtime/cpu/_gemm.c: dense float32 products on the native pool, against numpy in float64, for
every layout the kernels pass (transposed views, strided rows, broadcast stacks) and every split (whole
products, rows, columns), and the layouts it must refuse before reading anything."""
import numpy as np
import pytest

from dcm.runtime.cpu import native
from tests.runtime.activations import activation
from tests.runtime.switches import switched

pytestmark = pytest.mark.skipif(native.gemm is None, reason="this build has no compiled gemm")


def _random(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _check(a, b, threads):
    lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    out = np.full(lead + (a.shape[-2], b.shape[-1]), np.nan, np.float32)  # every value must be written
    native.gemm(np.broadcast_to(a, lead + a.shape[-2:]), np.broadcast_to(b, lead + b.shape[-2:]), out, threads)
    want = np.matmul(a.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4 * max(1, a.shape[-1]) ** 0.5)


@pytest.mark.parametrize("threads", [1, 2, 3, 1000])
@pytest.mark.parametrize("a_shape, b_shape", [
    ((300, 64), (64, 90)),  # rows cut
    ((70, 100), (100, 2000)),  # columns cut
    ((5, 7), (7, 3)),  # too small to cut
    ((16, 64, 32), (16, 32, 112)),  # a stack: whole products
    ((3, 1, 40, 50), (4, 50, 60)),  # broadcast stacks, fewer products than 2 per thread: rows or columns
    ((1, 1, 200, 8), (8, 30)),
    ((1, 500), (500, 900)), ((37, 1), (1, 41)), ((1, 1), (1, 1)),
])
def test_products_match_numpy(a_shape, b_shape, threads):
    _check(_random(a_shape, 1), _random(b_shape, 2), threads)


@pytest.mark.parametrize("k, n", [(1280, 1000), (257, 17), (1027, 130), (3, 5), (512, 16)])
def test_one_row_products_give_the_same_bits_on_any_thread_count(k, n):
    """A one-row product (a classifier at batch 1) is cut into parts of b's rows whose partial sums are
    added in a fixed order; a row read with a stride (a column of a wider matrix) as well."""
    b = _random((k, n), 12)
    for a in (_random((1, k), 13), _random((k, 3), 14)[:, 1:2].T):
        got = []
        for threads in (1, 2, 3, 8):
            out = np.full((1, n), np.nan, np.float32)
            native.gemm(a, b, out, threads)
            got.append(out)
        np.testing.assert_allclose(got[0], a.astype(np.float64) @ b.astype(np.float64), rtol=1e-4,
                                   atol=1e-4 * k ** 0.5)
        for other in got[1:]:
            np.testing.assert_array_equal(other, got[0])


@pytest.mark.parametrize("threads", [1, 2])
def test_transposed_and_strided_operands_need_no_copy(threads):
    """Column-major views (W.T of a contiguous W, attention's K^T) and rows of a wider buffer."""
    a, b = _random((300, 64), 3), _random((90, 64), 4)
    _check(a, b.T, threads)
    _check(_random((64, 300), 5).T, b.T, threads)
    wide = _random((300, 100), 6)
    _check(wide[:, 10:74], _random((64, 200), 7)[:, 5:95], threads)
    _check(np.swapaxes(_random((4, 50, 40), 8), -1, -2), _random((4, 50, 60), 9), threads)
    _check(_random((3, 40, 50), 10)[::2], _random((50, 60), 11), threads)  # a stride between products


def test_out_may_be_rows_of_a_wider_buffer():
    a, b = _random((40, 30)), _random((30, 20), 1)
    buffer = np.full((40, 50), 7, np.float32)
    native.gemm(a, b, buffer[:, 10:30], 2)
    np.testing.assert_allclose(buffer[:, 10:30], a @ b, rtol=1e-5, atol=1e-5)
    assert (buffer[:, :10] == 7).all() and (buffer[:, 30:] == 7).all()  # nothing written outside


@pytest.mark.parametrize("a_shape, b_shape", [((5, 0), (0, 3)), ((0, 4), (4, 5)), ((4, 3), (3, 0)), ((2, 0, 3), (2, 3, 4))])
def test_empty_products(a_shape, b_shape):
    """No inner axis: zeros (not the old contents of out); no rows, columns or products: nothing to do."""
    out = np.full(np.broadcast_shapes(a_shape[:-2], b_shape[:-2]) + (a_shape[-2], b_shape[-1]), np.nan, np.float32)
    native.gemm(np.ones(a_shape, np.float32), np.ones(b_shape, np.float32), out, 2)
    assert (out == 0).all()


def test_inf_and_nan_propagate_as_in_numpy():
    a, b = _random((40, 30)), _random((30, 50), 1)
    a[3, 4], b[7, 9] = np.inf, np.nan
    out = np.empty((40, 50), np.float32)
    native.gemm(a, b, out, 2)
    with np.errstate(invalid="ignore"):
        want = a @ b
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(want))


def _bad_calls():
    a, b, out = _random((8, 8)), _random((8, 8), 1), np.empty((8, 8), np.float32)
    shared = _random((8, 16))
    window = np.lib.stride_tricks.as_strided(_random(15), (8, 8), (4, 4))  # rows overlapping each other
    return {
        "a reversed": (lambda: native.gemm(a[::-1], b, out), ValueError, "non-negative strides"),
        "a rows overlap": (lambda: native.gemm(window, b, out), ValueError, "row-major or column-major"),
        "out column-major": (lambda: native.gemm(a, b, np.empty((8, 8), np.float32).T), ValueError, "row-major"),
        "out overlaps a": (lambda: native.gemm(shared[:, :8], b, shared[:, 8:]), ValueError, "overlaps"),
        "out is b": (lambda: native.gemm(a, b, b), ValueError, "overlaps|read-only"),
        "out aliased": (lambda: native.gemm(np.ones((2, 8, 8), np.float32), np.ones((2, 8, 8), np.float32),
                                            np.lib.stride_tricks.as_strided(out, (2, 8, 8), (0, 32, 4))),
                        ValueError, "two elements at one address"),
        "out read-only": (lambda: native.gemm(a, b, np.broadcast_to(out, (8, 8))), (ValueError, BufferError),
                          "read-only"),
        "float64": (lambda: native.gemm(a.astype(np.float64), b, out), TypeError, "float32"),
        "vector": (lambda: native.gemm(a[0], b, out[0]), TypeError, "2 to 16 dims"),
        "inner sizes": (lambda: native.gemm(a[:, :5], b, out), ValueError, "shapes must be"),
        "out shape": (lambda: native.gemm(a, b, out[:, :5]), ValueError, "shapes must be"),
        "ranks": (lambda: native.gemm(a[None], b, out), ValueError, "same number of axes"),
        "stacks": (lambda: native.gemm(np.ones((2, 8, 8), np.float32), np.ones((3, 8, 8), np.float32),
                                       np.empty((2, 8, 8), np.float32)), ValueError, "same leading axes"),
    }


@pytest.mark.parametrize("name", _bad_calls().keys())
def test_bad_layouts_are_refused_with_a_message(name):
    call, error, match = _bad_calls()[name]
    with pytest.raises(error, match=match):
        call()


def test_rows_too_far_apart_for_sgemm_are_refused():
    """A leading dimension past 2^31 - 1 elements (a broadcast view, no memory behind it)."""
    a = np.lib.stride_tricks.as_strided(np.ones(1, np.float32), (2, 1), (4 * 2**31, 4))
    with pytest.raises(ValueError, match="32-bit"):
        native.gemm(a, np.ones((1, 1), np.float32), np.empty((2, 1), np.float32))


# --- gemm_packed: products by a weight packed once (AVX-512) ------------------------------------

packed_only = pytest.mark.skipif(native.packed_simd is None or native.packed_simd() is None,
                                 reason="the packed kernel needs AVX-512 or AVX2 + FMA")
# The CPU's packed tiles: on AVX-512 both shapes (12 x 32 and 6 x 16), set_avx512(False) standing for an
# AVX2-only CPU; on AVX2 alone the AVX-512 run is the AVX2 path again.
TILES = ["avx512", "avx2"]


@pytest.fixture(params=TILES, autouse=True)
def tiles(request):
    if native.set_gemm_avx512 is None:
        yield None
        return
    with switched(native.set_gemm_avx512, request.param == "avx512"):
        yield native.packed_simd()


def _packed(w):
    return np.frombuffer(native.pack_weight(w), np.float32)


@packed_only
@pytest.mark.parametrize("threads", [1, 2, 5])
@pytest.mark.parametrize("m, k, n", [
    (1, 7, 1), (5, 33, 15), (12, 64, 16), (13, 64, 17), (30, 50, 31), (24, 8, 32), (25, 9, 33),  # row and panel tails
    (40, 300, 2000),  # panels in more than one block (2^18 floats)
    (3, 0, 20),  # no inner axis: the bias alone
])
def test_packed_products_match_numpy(m, k, n, threads):
    x, w = _random((m, k), m), _random((k, n), n)
    bias = _random(n, 7)
    for b, relu in [(None, False), (bias, False), (bias, True), (None, True)]:
        out = np.full((m, n), np.nan, np.float32)
        native.gemm_packed(x, _packed(w), out, threads, b, relu)
        want = x.astype(np.float64) @ w + (0 if b is None else b)
        np.testing.assert_allclose(out, np.maximum(want, 0) if relu else want, rtol=1e-4, atol=1e-4 * max(1, k) ** 0.5)


@packed_only
@pytest.mark.parametrize("act", [("clip", -0.5, 0.5), ("sigmoid", 0.0, 0.0), ("silu", 1.5, 0.0), ("hardswish", 0.0, 0.0),
                                 ("gelu", 0.0, 0.0), ("gelu_tanh", 0.0, 0.0)])
def test_packed_products_add_a_residual_then_activate(act):
    """The channels-last 1x1 convolution's epilogue: act(x @ w + bias + residual) before the one store."""
    x, w, bias, residual = _random((29, 40), 8), _random((40, 37), 9), _random(37, 10), _random((29, 37), 11)
    z = x.astype(np.float64) @ w + bias
    for res in (residual, None):
        out = np.empty((29, 37), np.float32)
        native.gemm_packed(x, _packed(w), out, 2, bias, act=act, residual=res)
        np.testing.assert_allclose(out, activation(act, z if res is None else z + res), rtol=1e-4, atol=1e-4)


@packed_only
@pytest.mark.parametrize("m, k, n, groups", [
    (6, 40, 37, 1), (6, 40, 37, 3),  # a group's x (2 x 40) smaller than the weight (40 x 64): x scaled
    (60, 20, 17, 2), (60, 20, 17, 1),  # x (30 x 20) larger than the weight (20 x 32): the weight scaled
    (0, 8, 5, 1),  # no rows
])
def test_packed_products_scale_each_groups_columns(m, k, n, groups):
    """scale [groups, k]: a squeeze-and-excitation gate per sample, on x's columns before the product,
    with the bias, a residual and the activation after it as without one."""
    x, w, bias, residual = _random((m, k), 12), _random((k, n), 13), _random(n, 14), _random((m, n), 15)
    scale = _random((groups, k), 16)
    out = np.empty((m, n), np.float32)
    act = ("silu", 1.5, 0.0)
    native.gemm_packed(x, _packed(w), out, 2, bias, act=act, residual=residual, scale=scale)
    scaled = (x.reshape(groups, -1, k) * scale[:, None, :]).reshape(m, k).astype(np.float64)
    np.testing.assert_allclose(out, activation(act, scaled @ w + bias + residual), rtol=1e-4, atol=1e-4)


@packed_only
def test_packed_weight_any_layout_and_strided_rows():
    w = _random((40, 70), 1)
    assert np.array_equal(_packed(w), _packed(np.asfortranarray(w)))  # the same panels from any layout
    assert np.array_equal(_packed(w[:, :35]), _packed(np.ascontiguousarray(w[:, :35])))
    wide_x, wide_out = _random((20, 100), 2), np.full((20, 90), 7, np.float32)
    native.gemm_packed(wide_x[:, 10:50], _packed(w[:, :35]), wide_out[:, 5:40], 2)
    np.testing.assert_allclose(wide_out[:, 5:40], wide_x[:, 10:50] @ w[:, :35], rtol=1e-5, atol=1e-4)
    assert (wide_out[:, :5] == 7).all() and (wide_out[:, 40:] == 7).all()


@packed_only
def test_packed_products_give_the_same_bits_on_any_thread_count():
    x, w = _random((100, 200), 3), _random((200, 300), 4)
    outs = []
    for threads in (1, 2, 3):
        outs.append(np.empty((100, 300), np.float32))
        native.gemm_packed(x, _packed(w), outs[-1], threads)
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


def _bad_packed_calls():
    x, w, out = _random((8, 8)), _random((8, 8), 1), np.empty((8, 8), np.float32)
    p = _packed(w) if native.pack_weight is not None else None
    return {
        "packed length": (lambda: native.gemm_packed(x, p[:-1], out), ValueError, "weight packs to 256"),
        "bias length": (lambda: native.gemm_packed(x, p, out, 1, np.ones(7, np.float32)), ValueError, "bias must have 8"),
        "x transposed": (lambda: native.gemm_packed(x.T, p, out), ValueError, "row-major"),
        "rows": (lambda: native.gemm_packed(x[:4], p, out), ValueError, "x must be"),
        "out overlaps x": (lambda: native.gemm_packed(x, p, x), ValueError, "overlaps"),
        "residual length": (lambda: native.gemm_packed(x, p, out, residual=x[:4]), ValueError, "residual must"),
        "residual is out": (lambda: native.gemm_packed(x, p, out, residual=out), ValueError, "overlaps"),
        "relu and act": (lambda: native.gemm_packed(x, p, out, 1, None, True, ("clip", 0, 1)), ValueError, "both"),
        "act name": (lambda: native.gemm_packed(x, p, out, act=("tanh", 0, 0)), ValueError, "unknown activation"),
        "out overlaps packed": (lambda: native.gemm_packed(x, p, p[:64].reshape(8, 8)), ValueError, "overlaps"),
        "scale columns": (lambda: native.gemm_packed(x, p, out, scale=np.ones((1, 7), np.float32)), ValueError,
                          "scale must be"),
        "scale groups": (lambda: native.gemm_packed(x, p, out, scale=np.ones((3, 8), np.float32)), ValueError,
                         "scale must be"),
        "scale is out": (lambda: native.gemm_packed(x, p, out, scale=out), ValueError, "overlaps"),
        "weight reversed": (lambda: native.pack_weight(w[::-1]), ValueError, "non-negative strides"),
        "weight rank": (lambda: native.pack_weight(np.ones((2, 2, 2), np.float32)), ValueError, "matrix"),
        "weight float64": (lambda: native.pack_weight(w.astype(np.float64)), TypeError, "float32"),
    }


@packed_only
@pytest.mark.parametrize("name", _bad_packed_calls().keys())
def test_bad_packed_calls_are_refused_with_a_message(name):
    call, error, match = _bad_packed_calls()[name]
    with pytest.raises(error, match=match):
        call()


@packed_only
def test_without_simd_the_packed_kernel_says_so():
    """set_simd(False) stands for a CPU without AVX2: packed_simd() is None (the layers keep BLAS,
    tests/runtime/test_matmul.py) and a call is refused rather than run on the wrong instructions."""
    previous = native.set_gemm_simd(False)
    try:
        assert native.packed_simd() is None
        w = _random((8, 8))
        with pytest.raises(RuntimeError, match="AVX2"):
            native.gemm_packed(w, _packed(w), np.empty((8, 8), np.float32))
    finally:
        native.set_gemm_simd(previous)


@packed_only
def test_the_avx2_tiles_give_what_the_avx512_ones_do(tiles):
    """Both tile shapes on one product with every epilogue: a row count that is not a multiple of either
    tile's rows, panels whose second half is partial (n = 37: 32 + 5) or absent (n = 13)."""
    if tiles != "avx2":
        pytest.skip("the AVX2 tiles' own check")
    for n in (13, 37, 64):
        x, w, bias, residual = _random((23, 50), 20), _random((50, n), 21), _random(n, 22), _random((23, n), 23)
        for act in (None, ("clip", -0.5, 0.5), ("silu", 1.0, 0.0), ("gelu", 0.0, 0.0)):
            out = np.full((23, n), np.nan, np.float32)
            native.gemm_packed(x, _packed(w), out, 3, bias, act=act, residual=residual)
            want = x.astype(np.float64) @ w + bias + residual
            np.testing.assert_allclose(out, want if act is None else activation(act, want), rtol=1e-4, atol=1e-4)


@packed_only
def test_a_deep_product_gives_the_same_bits_in_chunks_of_k(tiles):
    """k past 2048 (one panel more than the AVX2 tiles' block): those take k in chunks, the partial sums
    stored and loaded back, the bias first and the residual and activation once after the last chunk;
    rows not a multiple of the tile's, the last panel partial, any thread count the same bits."""
    m, k, n = 23, 2600, 37
    x, w, bias, residual = _random((m, k), 24), _random((k, n), 25), _random(n, 26), _random((m, n), 27)
    packed = _packed(w)
    want = x.astype(np.float64) @ w + bias + residual
    for act in (None, ("relu", 0.0, 0.0), ("clip", -20.0, 20.0), ("silu", 1.0, 0.0)):
        outs = []
        for threads in (1, 2, 3):
            outs.append(np.full((m, n), np.nan, np.float32))
            native.gemm_packed(x, packed, outs[-1], threads, bias, act=act, residual=residual)
        np.testing.assert_allclose(outs[0], want if act is None else activation(act, want), rtol=1e-4,
                                   atol=1e-4 * k ** 0.5)
        assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


@packed_only
def test_packed_relu_keeps_nan_as_numpy_does():
    x, w = _random((3, 4)), _random((4, 5), 1)
    x[1, 2] = np.nan
    out = np.empty((3, 5), np.float32)
    native.gemm_packed(x, _packed(w), out, 1, None, True)
    assert np.isnan(out[1]).all() and not np.isnan(out[[0, 2]]).any()


def test_strides_whose_extent_overflows_are_refused():
    """A view no array could have (numpy's as_strided allows it): refused before any offset is formed."""
    x = np.ones(4, np.float32)
    a = np.lib.stride_tricks.as_strided(x, (3, 2, 2), (2**62, 8, 4))
    with pytest.raises(ValueError, match="overflow"):
        native.gemm(a, np.ones((3, 2, 2), np.float32), np.empty((3, 2, 2), np.float32))


def test_numpy_sgemm_is_found_in_numpy_wheel():
    """numpy's wheel bundles an OpenBLAS; the kernels call its sgemm (sgemm_source.py) where it is there."""
    import glob
    import os

    from dcm.runtime.cpu import sgemm_source

    bundled = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas64*"))
    if not bundled:
        pytest.skip("this numpy does not bundle OpenBLAS")
    assert sgemm_source.numpy_sgemm() != 0
    assert sgemm_source.ILP64_SGEMM == (0 if os.environ.get("DCM_SCIPY_SGEMM") == "1" else sgemm_source.numpy_sgemm())


@pytest.mark.parametrize("scipy_sgemm", ["0", "1"])
def test_both_sgemm_sources_give_the_product(scipy_sgemm):
    """With DCM_SCIPY_SGEMM=1 the kernels take scipy's sgemm instead (a fresh process: each module finds
    its sgemm once); both give the product, in a row cut, a column cut and a stack."""
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from dcm.runtime.cpu import native, sgemm_source\n"
        "rng = np.random.default_rng(0)\n"
        "for a, b in (((300, 64), (64, 90)), ((70, 100), (100, 2000)), ((16, 64, 32), (16, 32, 112))):\n"
        "    a, b = rng.standard_normal(a).astype(np.float32), rng.standard_normal(b).astype(np.float32)\n"
        "    out = np.empty(a.shape[:-1] + b.shape[-1:], np.float32)\n"
        "    native.gemm(a, b, out, 2)\n"
        "    np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)\n"
        "print(sgemm_source.ILP64_SGEMM != 0)\n")
    env = {**os.environ, "DCM_SCIPY_SGEMM": scipy_sgemm}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    if scipy_sgemm == "1":
        assert run.stdout.strip() == "False"
