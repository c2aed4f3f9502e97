"""The compiled kernels (dcm/runtime/cpu/_native.c): the sparse matvec agrees with scipy and the direct
sparse convolution with a float64 reference, over every form, range, stride, dilation, pad and group,
and every malformed array or call is refused, so that no call can read or write out of bounds."""
import contextlib
import os

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from dcm.runtime.cpu import native
from tests.runtime.switches import switched

if native.SparseMatrix is None:
    if os.environ.get("DCM_ALLOW_NO_NATIVE") == "1":
        pytest.skip("built without the native kernel (DCM_ALLOW_NO_NATIVE=1)", allow_module_level=True)
    pytest.fail("dcm.runtime.cpu._native was not built (no C compiler at install?): reinstall with one, "
                "or set DCM_ALLOW_NO_NATIVE=1 to test the scipy fallback alone", pytrace=False)

SparseMatrix, SparseConv = native.SparseMatrix, native.SparseConv


def _parts(rows=37, cols=53, density=0.2, seed=0, wide=False):
    w = sp.random(rows, cols, density=density, format="csr", dtype=np.float32, random_state=seed)
    w.sort_indices()
    c = sp.csc_array(w)
    c.sort_indices()
    index = np.int32 if wide else np.uint16
    arrays = (w.indptr.astype(np.int64), w.indices.astype(index), w.data,
              c.indptr.astype(np.int64), c.indices.astype(index), c.data)
    return w, arrays


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("form", ["csr", "csc", "auto"])
@pytest.mark.parametrize("zeros", [0.0, 0.8])
def test_matvec_matches_scipy(wide, form, zeros):
    w, arrays = _parts(wide=wide)
    m = SparseMatrix(*w.shape, *arrays)
    assert m.forms == (True, True) and (m.rows, m.cols) == w.shape
    rng = np.random.default_rng(1)
    x = rng.standard_normal(w.shape[1]).astype(np.float32)
    x[rng.random(x.size) < zeros] = 0
    bias = rng.standard_normal(w.shape[0]).astype(np.float32)
    y = np.full(w.shape[0], 99, np.float32)  # csc adds into y: start it from bias (or zeros)
    assert m.matvec(x, y, bias, True, form) == 0
    np.testing.assert_allclose(y, np.maximum(w @ x + bias, 0), rtol=1e-5, atol=1e-5)
    y2 = np.zeros_like(y) if form == "csc" else np.full_like(y, 99)
    m.matvec(x, y2, None, False, form)
    np.testing.assert_allclose(y2, w @ x, rtol=1e-5, atol=1e-5)


def test_ranges_split_rows_and_columns():
    w, arrays = _parts(60, 80)
    m = SparseMatrix(*w.shape, *arrays)
    x = np.random.default_rng(2).standard_normal(80).astype(np.float32)
    rows = np.zeros(60, np.float32)
    m.matvec(x, rows, form="csr", begin=0, end=25)
    m.matvec(x, rows, form="csr", begin=25, end=60)
    cols = np.zeros(60, np.float32)
    m.matvec(x, cols, form="csc", begin=0, end=30)
    m.matvec(x, cols, form="csc", begin=30)
    for y in (rows, cols):
        np.testing.assert_allclose(y, w @ x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("zeros", [0.0, 0.9])  # CSR by rows; CSC (mostly zero x) in parts of columns
def test_whole_matvec_on_threads_gives_the_same_bits(zeros):
    """A whole batch-1 product splits itself over the native pool: CSR by rows, CSC (here 3 parts of 64k
    stored weights) with partial sums added in order, so 1, 2 or 5 threads give the same bits."""
    w, arrays = _parts(500, 600, density=0.7)  # 210k stored weights
    m = SparseMatrix(*w.shape, *arrays)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(600).astype(np.float32)
    x[rng.random(600) < zeros] = 0
    x[7] = np.inf  # counted once whatever the split
    bias = rng.standard_normal(500).astype(np.float32)
    ys = []
    for threads in (1, 2, 5):
        y = np.full(500, 99, np.float32)
        assert m.matvec(x, y, bias, True, threads=threads) == 1
        ys.append(y)
    x[7] = 0
    y = np.full(500, 99, np.float32)
    m.matvec(x, y, bias, True, threads=2)
    np.testing.assert_allclose(y, np.maximum(w @ x + bias, 0), rtol=1e-4, atol=1e-4)
    assert all(np.array_equal(y, ys[0], equal_nan=True) for y in ys[1:])


def test_one_form_alone_and_non_finite_count():
    w, (rp, ri, rv, cp, ci, cv) = _parts()
    only_csr, only_csc = SparseMatrix(*w.shape, rp, ri, rv), SparseMatrix(*w.shape, csc_indptr=cp, csc_indices=ci,
                                                                            csc_values=cv)
    assert only_csr.forms == (True, False) and only_csc.forms == (False, True)
    x = np.ones(w.shape[1], np.float32)
    x[[3, 9]] = [np.inf, np.nan]
    y = np.zeros(w.shape[0], np.float32)
    assert only_csr.matvec(x, y) == 2 and only_csc.matvec(x, y) == 2
    with pytest.raises(ValueError, match="no CSC form"):
        only_csr.matvec(x, y, form="csc")


@pytest.mark.parametrize("simd", [True, False])
@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("n", [2, 7, 8, 64, 70, 131])  # 64-column blocks, 8-column vectors, a scalar tail
def test_matmat_matches_scipy(wide, n, simd):
    with switched(native.set_simd, simd):
        _check_matmat(wide, n)


def _check_matmat(wide, n):
    w, arrays = _parts(wide=wide)
    m = SparseMatrix(*w.shape, *arrays)
    rng = np.random.default_rng(n)
    xt = rng.standard_normal((w.shape[1], n)).astype(np.float32)
    bias = rng.standard_normal(w.shape[0]).astype(np.float32)
    yt = np.full((w.shape[0], n), np.nan, np.float32)
    m.matmat(xt, yt, bias, True)
    np.testing.assert_allclose(yt, np.maximum(w @ xt + bias[:, None], 0), rtol=1e-5, atol=1e-5)
    split = np.full_like(yt, np.nan)
    m.matmat(xt, split, None, False, 0, 20)
    m.matmat(xt, split, None, False, 20)
    np.testing.assert_allclose(split, w @ xt, rtol=1e-5, atol=1e-5)
    xt[3, 1] = np.nan  # stored weights carry NaN through the ReLU
    xt[-1, 0] = np.inf
    assert m.matmat(xt, yt, bias, True, threads=2) == 2  # counted while each panel is packed
    assert np.array_equal(np.isnan(yt[:, 1]), (w[:, [3]] != 0).toarray()[:, 0])
    assert m.matmat(xt, split, None, False, 20, threads=2) == 0  # once per product: the range from row 0
    rows = np.empty((n, w.shape[0]), np.float32)
    assert m.matmat_rows(np.ascontiguousarray(xt.T), rows, threads=2) == 2


def test_matmat_refuses_bad_calls():
    w, (rp, ri, rv, cp, ci, cv) = _parts()
    m = SparseMatrix(*w.shape, rp, ri, rv)
    xt, yt = np.ones((53, 4), np.float32), np.zeros((37, 4), np.float32)
    for bad_x, bad_y, message in [(xt[:-1], yt, r"xt must be \[53, n\]"), (xt, np.zeros((37, 3), np.float32), "yt"),
                                  (xt.reshape(-1), yt, "xt must be")]:
        with pytest.raises(ValueError, match=message):
            m.matmat(bad_x, bad_y)
    with pytest.raises(ValueError, match="outside"):
        m.matmat(xt, yt, None, False, 30, 40)
    with pytest.raises((TypeError, ValueError), match="contiguous"):
        m.matmat(np.ones((4, 53), np.float32).T, yt)
    only_csc = SparseMatrix(*w.shape, csc_indptr=cp, csc_indices=ci, csc_values=cv)
    with pytest.raises(ValueError, match="no CSR form"):
        only_csc.matmat(xt, yt)


@contextlib.contextmanager
def _paths(path: str):
    """The batched products' AVX-512 path (where the CPU has it), their AVX2 one, or portable C."""
    with switched(native.set_avx512, path == "avx512"), switched(native.set_simd, path != "generic"):
        yield


@pytest.mark.parametrize("path", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("density", [0.0, 0.01, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("n", [1, 7, 9, 128, 197])  # panels of 8 (n <= 8) or 32 vectors, and their tails
def test_matmat_rows_matches_dense(density, n, path):
    """x [n, cols] @ W.T on the packed panels, against numpy on the dense W: odd sizes, both index
    widths, bias and ReLU, disjoint column ranges (the thread split), NaN carried by stored weights."""
    rng = np.random.default_rng(n)
    for wide, (rows, cols) in ((False, (37, 53)), (True, (300, 21))):
        w = sp.random_array((rows, cols), density=density, format="csr", dtype=np.float32, rng=rng)
        w.sort_indices()
        m = SparseMatrix(rows, cols, w.indptr.astype(np.int64), w.indices.astype(np.int32 if wide else np.uint16),
                         w.data)
        dense = w.toarray()
        x = rng.standard_normal((n, cols)).astype(np.float32)
        bias = rng.standard_normal(rows).astype(np.float32)
        with _paths(path):
            assert native.batched_simd() in {"avx512": ("avx512", "avx2", "portable"), "avx2": ("avx2", "portable"),
                                             "generic": ("portable",)}[path]  # as far as the CPU goes
            y = np.full((n, rows), np.nan, np.float32)
            assert m.matmat_rows(x, y, bias, True) == 0
            np.testing.assert_allclose(y, np.maximum(x @ dense.T + bias, 0), rtol=1e-5, atol=1e-5)
            split = np.full_like(y, np.nan)
            m.matmat_rows(x, split, None, False, 0, 13)
            m.matmat_rows(x, split, None, False, 13)
            np.testing.assert_allclose(split, x @ dense.T, rtol=1e-5, atol=1e-5)
            x[n - 1, 3] = np.inf
            assert m.matmat_rows(x, y, bias, False) == 1
        stored = dense[:, 3] != 0  # inf * w: +-inf at stored weights, the rest of the row untouched
        assert np.array_equal(~np.isfinite(y[n - 1]), stored)
        x[n - 1, 3] = 0
        np.testing.assert_allclose(y[n - 1, ~stored], (x[n - 1] @ dense.T + bias)[~stored], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", ["avx512", "avx2", "generic"])
def test_threads_give_the_same_sums(path):
    """threads=2 and 3 on the native pool: every output written once, with the sums of one thread (each
    range adds in the same order), and the Inf/NaN count added once per input. Sizes past the least
    work per range (RANGE_MIN_MACS), so that the ranges go to the pool's threads."""
    rng = np.random.default_rng(11)
    w = sp.random_array((300, 256), density=0.3, format="csr", dtype=np.float32, rng=rng)
    w.sort_indices()
    m = SparseMatrix(300, 256, w.indptr.astype(np.int64), w.indices.astype(np.int32), w.data)
    x = rng.standard_normal((197, 256)).astype(np.float32)
    x[5, 7] = np.nan
    bias = rng.standard_normal(300).astype(np.float32)
    cw = (rng.standard_normal((20, 32, 3, 3)) * (rng.random((20, 32, 3, 3)) < 0.3)).astype(np.float32)
    conv = _sparse_conv(cw, 1)
    cx = rng.standard_normal((2, 32, 30, 30)).astype(np.float32)
    cx[1, 4, 6, 7] = np.inf
    args = (cx.shape, (1, 1), (1, 1), (1, 1, 1, 1), bias[:20], True)
    with _paths(path):
        want_rows, want_cols = np.empty((197, 300), np.float32), np.empty((300, 197), np.float32)
        want_conv = np.empty((2, 20, 30, 30), np.float32)
        assert m.matmat_rows(x, want_rows, bias, True) == 1
        assert m.matmat(np.ascontiguousarray(x.T), want_cols, bias, True) == 1
        assert conv.run(cx, want_conv, *args) == 1
        for threads in (2, 3):
            y = np.full_like(want_rows, np.nan)
            assert m.matmat_rows(x, y, bias, True, threads=threads) == 1
            np.testing.assert_array_equal(y, want_rows)
            y = np.full_like(want_cols, np.nan)
            assert m.matmat(np.ascontiguousarray(x.T), y, bias, True, 0, 150, threads=threads) == 1
            assert m.matmat(np.ascontiguousarray(x.T), y, bias, True, 150, threads=threads) == 0
            np.testing.assert_array_equal(y, want_cols)
            y = np.full_like(want_conv, np.nan)
            assert conv.run(cx, y, *args, c_end=7, threads=threads) == 1
            assert conv.run(cx, y, *args, c_begin=7, threads=threads) == 1
            np.testing.assert_array_equal(y, want_conv)


@pytest.mark.parametrize("shape, strides, groups", [((40, 40), (1, 1), 1), ((45, 70), (1, 2), 1), ((40, 40), (1, 1), 2)])
def test_conv_threads_by_tiles(shape, strides, groups):
    """SparseConv on AVX-512 splits a plane of at least 2 tiles a thread whose work buffer is past 2 MiB
    (160 channels, 3 copies) by tiles, every channel each (40x40: 8 tiles of 16 segments, the last of 8;
    45x70 at horizontal stride 2 in two phases): the same sums as one thread, every output written once
    (y starts as NaN), over output channel sub-ranges, with input channel blocks, groups, a bias and the
    ReLU; 2-4 threads. Against numpy too."""
    rng = np.random.default_rng(shape[1])
    w = (rng.standard_normal((24, 160 // groups, 3, 3)) * (rng.random((24, 160 // groups, 3, 3)) < 0.3)).astype(np.float32)
    conv = _sparse_conv(w, groups)
    x = rng.standard_normal((2, 160, *shape)).astype(np.float32)
    bias = rng.standard_normal(24).astype(np.float32)
    oh, ow = shape[0], (shape[1] + 2 - 3) // strides[1] + 1
    args = (x.shape, strides, (1, 1), (1, 1, 1, 1), bias, True)
    with _paths("avx512"):
        want = np.full((2, 24, oh, ow), np.nan, np.float32)
        conv.run(x, want, *args)
        ref = _conv_reference(x, w, bias, strides, (1, 1), (1, 1, 1, 1), groups)
        np.testing.assert_allclose(want, np.maximum(ref, 0), rtol=1e-4, atol=1e-4)
        for threads in (2, 3, 4):
            y = np.full_like(want, np.nan)
            conv.run(x, y, *args, c_end=10, threads=threads)
            conv.run(x, y, *args, c_begin=10, threads=threads)
            np.testing.assert_array_equal(y, want)


@pytest.mark.skipif(not (native.batched_simd and native.batched_simd() == "avx512"),
                    reason="the flat layout is SparseConv's AVX-512 path")
@pytest.mark.parametrize("shape, kernel, dilations, pads, channels", [
    ((7, 7), (3, 3), (1, 1), (1, 1, 1, 1), 400),  # ResNet's last stage: 4 segments, 3 blocks of input channels
    ((5, 5), (3, 3), (1, 1), (1, 1, 1, 1), 16),  # 3 segments, the last of 1 output
    ((20, 20), (3, 3), (1, 1), (1, 1, 1, 1), 24),  # 2 tiles, the second from mid-row
    ((9, 6), (1, 5), (1, 2), (0, 3, 2, 4), 8),  # uneven pads, a dilation, wider padding than outputs
    ((8, 8), (3, 3), (2, 2), (2, 2, 2, 2), 40),
])
def test_narrow_planes_run_flat(shape, kernel, dilations, pads, channels):
    """On AVX-512, planes much narrower than a 16-lane segment run flat: segments across the padded
    rows, each packed into y without its padding columns' lanes. Every output is written once (y
    starts as NaN), against the float64 reference with a bias and the ReLU, and 2-3 threads over
    output channel ranges give the same bits as one."""
    rng = np.random.default_rng(channels)
    size = (12, channels, *kernel)
    w = (rng.standard_normal(size) * (rng.random(size) < 0.3)).astype(np.float32)
    conv = _sparse_conv(w, 1)
    x = rng.standard_normal((2, channels, *shape)).astype(np.float32)
    bias = rng.standard_normal(12).astype(np.float32)
    ref = np.maximum(_conv_reference(x, w, bias, (1, 1), dilations, pads, 1), 0)
    args = (x.shape, (1, 1), dilations, pads, bias, True)
    with _paths("avx512"):
        one = np.full(ref.shape, np.nan, np.float32)
        assert conv.run(x, one, *args) == 0
        np.testing.assert_allclose(one, ref, rtol=1e-4, atol=1e-4)
        for threads in (2, 3):
            y = np.full_like(one, np.nan)
            conv.run(x, y, *args, c_end=5, threads=threads)
            conv.run(x, y, *args, c_begin=5, threads=threads)
            np.testing.assert_array_equal(y, one)


@pytest.mark.parametrize("path", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("rows, cols, density", [(37, 600, 0.01), (37, 600, 0.3), (19, 513, 1.0), (300, 1500, 0.3)])
def test_wide_weights_go_by_column_blocks(rows, cols, density, path):
    """More than 256 inputs: each row's weights go one block of 256 columns at a time, the sums kept
    between blocks (empty blocks, a short last block, both index widths, row groups and a short last
    group). Unsorted rows fall back to one block. Against numpy."""
    rng = np.random.default_rng(cols)
    w = sp.random_array((rows, cols), density=density, format="csr", dtype=np.float32, rng=rng)
    w.sort_indices()
    dense = w.toarray()
    bias = rng.standard_normal(rows).astype(np.float32)
    narrow = SparseMatrix(rows, cols, w.indptr.astype(np.int64), w.indices.astype(np.uint16), w.data)
    wide = SparseMatrix(rows, cols, w.indptr.astype(np.int64), w.indices.astype(np.int32), w.data)
    order = np.concatenate([rng.permutation(np.arange(a, b)) for a, b in zip(w.indptr[:-1], w.indptr[1:])])
    unsorted = SparseMatrix(rows, cols, w.indptr.astype(np.int64), w.indices[order].astype(np.int32), w.data[order])
    with _paths(path):
        for n in (5, 40, 197):
            x = rng.standard_normal((n, cols)).astype(np.float32)
            want = np.maximum(x @ dense.T + bias, 0)
            for m, threads in ((narrow, 1), (wide, 2), (unsorted, 1)):
                y = np.full((n, rows), np.nan, np.float32)
                m.matmat_rows(x, y, bias, True, threads=threads)
                np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
                yt = np.full((rows, n), np.nan, np.float32)
                m.matmat(np.ascontiguousarray(x.T), yt, bias, True, 0, rows // 2, threads=threads)
                m.matmat(np.ascontiguousarray(x.T), yt, bias, True, rows // 2, threads=threads)
                np.testing.assert_allclose(yt, want.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("path", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("n", [16, 17, 40, 49, 64, 65, 392])
def test_conv_columns_on_wide_panels(n, path):
    """im2col's columns of a 512-channel 3x3 layer (4608 inputs) at the vector counts of 7x7 planes: on
    AVX-512 one panel of 49 vectors (4 registers a row, the last holding 1 vector), 392 as six panels
    of 64 and one of 8, rows of 1 to 4 registers (16, 17, 40, 64, 65); 128-column blocks, a short last
    row group, both index widths, the thread split. Against numpy on the dense W."""
    rng = np.random.default_rng(n)
    rows, cols = 40, 4608
    w = sp.random_array((rows, cols), density=0.3, format="csr", dtype=np.float32, rng=rng)
    w.sort_indices()
    dense = w.toarray()
    xt = rng.standard_normal((cols, n)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    want = np.maximum(dense @ xt + bias[:, None], 0)
    with _paths(path):
        for index, threads in ((np.uint16, 1), (np.int32, 2)):
            m = SparseMatrix(rows, cols, w.indptr.astype(np.int64), w.indices.astype(index), w.data)
            yt = np.full((rows, n), np.nan, np.float32)
            assert m.matmat(xt, yt, bias, True, threads=threads) == 0
            np.testing.assert_allclose(yt, want, rtol=1e-4, atol=1e-4)
            y = np.full((n, rows), np.nan, np.float32)
            m.matmat_rows(np.ascontiguousarray(xt.T), y, bias, True, threads=threads)
            np.testing.assert_allclose(y, want.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("path", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("n", [40, 300])
def test_matmat_rows_counts_inf_and_nan_wherever_they_sit(n, path):
    """Packing x by rows notes an Inf or NaN as it goes (8 x 8 blocks and their scalar edges), and the
    product returns the count of them: on shared panels (40 rows), and on panels each thread packs as
    it uses them (300 rows: 5 panels of 64, streamed on one thread but not on two)."""
    rng = np.random.default_rng(n)
    w = sp.random_array((24, 67), density=0.3, format="csr", dtype=np.float32, rng=rng)
    w.sort_indices()
    m = SparseMatrix(24, 67, w.indptr.astype(np.int64), w.indices.astype(np.int32), w.data)
    x = rng.standard_normal((n, 67)).astype(np.float32)
    y = np.empty((n, 24), np.float32)
    with _paths(path):
        for threads in (1, 2):
            assert m.matmat_rows(x, y, threads=threads) == 0
            np.testing.assert_allclose(y, x @ w.toarray().T, rtol=1e-4, atol=1e-4)
            for spots in ([(3, 5)], [(n - 1, 66)], [(n - 1, 2), (8, 64), (17, 30)]):  # a block, both edges
                bad = x.copy()
                for i, (r, c) in enumerate(spots):
                    bad[r, c] = np.nan if i % 2 else -np.inf
                assert m.matmat_rows(bad, y, threads=threads) == len(spots)
                assert m.matmat_rows(bad, y, None, False, 8, 24, threads=threads) == 0  # counted once: begin 0


def test_matmat_rows_unsorted_indices_and_bad_calls():
    w, (rp, ri, rv, cp, ci, cv) = _parts()
    shuffled = ri.copy()
    for r in range(w.shape[0]):  # each row's entries reversed: the kernel must not assume order
        shuffled[rp[r]:rp[r + 1]] = ri[rp[r]:rp[r + 1]][::-1]
    values = rv.copy()
    for r in range(w.shape[0]):
        values[rp[r]:rp[r + 1]] = rv[rp[r]:rp[r + 1]][::-1]
    x = np.random.default_rng(2).standard_normal((40, 53)).astype(np.float32)
    y = np.empty((40, 37), np.float32)
    SparseMatrix(*w.shape, rp, shuffled, values).matmat_rows(x, y)
    np.testing.assert_allclose(y, x @ w.toarray().T, rtol=1e-5, atol=1e-5)
    m = SparseMatrix(*w.shape, rp, ri, rv)
    for bad_x, bad_y in [(x[:, :-1].copy(), y), (x, y[:-1]), (x.T.copy(), y), (x.reshape(-1), y)]:
        with pytest.raises(ValueError, match=r"x must be \[n, 53\], y \[n, 37\]"):
            m.matmat_rows(bad_x, bad_y)
    with pytest.raises(ValueError, match="outside"):
        m.matmat_rows(x, y, None, False, 30, 40)
    with pytest.raises((TypeError, ValueError), match="contiguous"):
        m.matmat_rows(np.ones((53, 40), np.float32).T, y)
    with pytest.raises(ValueError, match="no CSR form"):
        SparseMatrix(*w.shape, csc_indptr=cp, csc_indices=ci, csc_values=cv).matmat_rows(x, y)


def _bad(arrays, i, value):
    arrays = list(arrays)
    arrays[i] = value
    return arrays


@pytest.mark.parametrize("change, message", [
    (lambda a: _bad(a, 0, a[0][:-1]), "indptr must have"),
    (lambda a: _bad(a, 0, np.r_[a[0][:-1], a[0][-1] + 5]), "indptr must have"),
    (lambda a: _bad(a, 0, np.r_[0, a[0][2], a[0][1], a[0][3:]]), "indptr decreases"),
    (lambda a: _bad(a, 1, np.full_like(a[1], 53)), "outside 0..52"),
    (lambda a: _bad(a, 4, np.full_like(a[4], 40)), "outside 0..36"),
    (lambda a: _bad(a, 2, a[2].astype(np.float64)), "float32"),
    (lambda a: _bad(a, 0, a[0].astype(np.int32)), "int64"),
    (lambda a: _bad(a, 1, a[1].astype(np.int8)), "uint16"),
    (lambda a: _bad(a, 2, a[2][:-1]), "indptr must have"),
])
def test_malformed_arrays_are_refused(change, message):
    w, arrays = _parts()
    with pytest.raises((ValueError, TypeError), match=message):
        SparseMatrix(*w.shape, *change(arrays))


def test_malformed_calls_are_refused():
    w, arrays = _parts()
    m = SparseMatrix(*w.shape, *arrays)
    x, y = np.ones(53, np.float32), np.zeros(37, np.float32)
    with pytest.raises(ValueError, match="x must have 53"):
        m.matvec(x[:-1], y)
    with pytest.raises(ValueError, match="x must have 53"):
        m.matvec(x, y, np.zeros(36, np.float32))
    with pytest.raises(TypeError, match="float32"):
        m.matvec(x.astype(np.float64), y)
    with pytest.raises((TypeError, ValueError), match="contiguous"):
        m.matvec(np.ones(106, np.float32)[::2], y)
    m.matvec(x[None], y.reshape(1, 37))  # any shape with the right count: a [1, n] row
    with pytest.raises(ValueError, match="x must have 53"):
        m.matvec(np.ones((2, 53), np.float32), y)
    with pytest.raises(ValueError, match="outside"):
        m.matvec(x, y, form="csr", begin=5, end=80)
    with pytest.raises(ValueError, match="form must be"):
        m.matvec(x, y, form="dense")
    ro = np.zeros(37, np.float32)
    ro.flags.writeable = False
    with pytest.raises((TypeError, ValueError, BufferError)):
        m.matvec(x, ro)
    with pytest.raises(ValueError, match="CSR arrays, the CSC arrays or both"):
        SparseMatrix(3, 3)
    with pytest.raises(ValueError, match="rows and cols"):
        SparseMatrix(1 << 31, 3, np.zeros(2, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))


def _conv_reference(x, w, bias, strides, dilations, pads, groups):
    """float64 convolution by summing shifted windows, one kernel offset at a time."""
    n, c, h, wd = x.shape
    co, cg, kh, kw = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (xp.shape[2] - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    ow = (xp.shape[3] - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    y = np.zeros((n, co, oh, ow)) + (0 if bias is None else bias[None, :, None, None])
    per = co // groups
    for i in range(kh):
        for j in range(kw):
            win = xp[:, :, i * dilations[0] :: strides[0], j * dilations[1] :: strides[1]][:, :, :oh, :ow]
            for g in range(groups):
                y[:, g * per : (g + 1) * per] += np.einsum("nchw,oc->nohw", win[:, g * cg : (g + 1) * cg],
                                                          w[g * per : (g + 1) * per, :, i, j])
    return y


def _sparse_conv(w, groups):
    m = sp.csr_array(w.reshape(w.shape[0], -1))
    return SparseConv(w.shape[0], w.shape[1], w.shape[2], w.shape[3], groups, m.indptr.astype(np.int64),
                      m.indices.astype(np.int32), m.data)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_conv_matches_reference(data):
    d = data.draw
    groups = d(st.sampled_from([1, 1, 2, 3]))
    cg, per = d(st.integers(1, 3)), d(st.integers(1, 3))
    kh, kw = d(st.integers(1, 4)), d(st.integers(1, 4))
    strides, dilations = (d(st.integers(1, 3)), d(st.integers(1, 2))), (d(st.integers(1, 2)), d(st.integers(1, 2)))
    pads = tuple(d(st.integers(0, 4)) for _ in range(4))
    n, h, wd = d(st.integers(1, 3)), d(st.integers(1, 13)), d(st.integers(1, 30))
    if h + pads[0] + pads[2] < (kh - 1) * dilations[0] + 1 or wd + pads[1] + pads[3] < (kw - 1) * dilations[1] + 1:
        return
    rng = np.random.default_rng(d(st.integers(0, 2**16)))
    w = (rng.standard_normal((groups * per, cg, kh, kw)) * (rng.random((groups * per, cg, kh, kw)) < 0.6))
    w = w.astype(np.float32)
    x = rng.standard_normal((n, groups * cg, h, wd)).astype(np.float32)
    bias = rng.standard_normal(groups * per).astype(np.float32) if d(st.booleans()) else None
    relu = d(st.booleans())
    ref = _conv_reference(x, w, bias, strides, dilations, pads, groups)
    ref = np.maximum(ref, 0) if relu else ref
    y = np.full(ref.shape, np.nan, np.float32)
    with switched(native.set_simd, d(st.booleans())):
        assert _sparse_conv(w, groups).run(x, y, x.shape, strides, dilations, pads, bias, relu) == 0
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [33, 49, 64])
def test_one_panel_by_columns_gives_every_thread_count_the_same_bits(n):
    """On AVX-512 one panel of 33-64 vectors and a W of 4+ column blocks goes in two parts by columns,
    whose sums are added in order (KSPLIT_PARTS), whatever the thread count: 1-3 threads and row
    ranges give the same bits; against numpy, a ReLU, a NaN row kept, bias only once."""
    rng = np.random.default_rng(n)
    rows, cols = 70, 1000  # 8 column blocks of 128, the last part-filled
    w = sp.random_array((rows, cols), density=0.3, format="csr", dtype=np.float32, rng=rng)
    w.sort_indices()
    xt = rng.standard_normal((cols, n)).astype(np.float32)
    xt[5, 3] = np.nan  # the rows that store a weight at input 5 get NaN in column 3, ReLU or not
    bias = rng.standard_normal(rows).astype(np.float32)
    m = SparseMatrix(rows, cols, w.indptr.astype(np.int64), w.indices.astype(np.uint16), w.data)
    with _paths("avx512"):
        one = np.full((rows, n), np.inf, np.float32)
        assert m.matmat(xt, one, bias, True) == 1
        for threads in (2, 3):
            y = np.full_like(one, np.inf)
            m.matmat(xt, y, bias, True, 0, 33, threads=threads)
            m.matmat(xt, y, bias, True, 33, threads=threads)
            np.testing.assert_array_equal(y, one)
    with np.errstate(invalid="ignore"):
        want = np.maximum(w.toarray() @ np.nan_to_num(xt, nan=0.0) + bias[:, None], 0)
    stored = w.toarray()[:, 5] != 0
    want[stored, 3] = np.nan
    np.testing.assert_allclose(one, want, rtol=1e-4, atol=1e-4)


def test_conv_ranges_split_samples_and_channels():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    x = rng.standard_normal((3, 4, 10, 11)).astype(np.float32)
    conv = _sparse_conv(w, 1)
    whole, split = np.empty((3, 6, 10, 11), np.float32), np.full((3, 6, 10, 11), np.nan, np.float32)
    args = (x.shape, (1, 1), (1, 1), (1, 1, 1, 1))
    conv.run(x, whole, *args)
    conv.run(x, split, *args, begin=0, end=2)
    conv.run(x, split, *args, begin=2, end=3, c_begin=0, c_end=4)
    conv.run(x, split, *args, begin=2, end=3, c_begin=4)
    np.testing.assert_array_equal(split, whole)
    x[1, 2, 3, 4] = np.nan  # every weight is stored: the windows that hold it are NaN, ReLU or not
    assert conv.run(x, whole, *args, None, True) == 1
    expected = np.zeros((3, 6, 10, 11), bool)
    expected[1, :, 2:5, 3:6] = True
    np.testing.assert_array_equal(np.isnan(whole), expected)


def test_conv_refuses_bad_weights_and_calls():
    w = np.ones((4, 2, 3, 3), np.float32)
    m = sp.csr_array(w.reshape(4, -1))
    ptr, idx = m.indptr.astype(np.int64), m.indices.astype(np.int32)
    with pytest.raises(ValueError, match="outside 0..17"):
        SparseConv(4, 2, 3, 3, 1, ptr, np.full_like(idx, 18), m.data)
    with pytest.raises(ValueError, match="divisible by groups"):
        SparseConv(4, 2, 3, 3, 3, ptr, idx, m.data)
    with pytest.raises(TypeError, match="int32"):
        SparseConv(4, 2, 3, 3, 1, ptr, idx.astype(np.uint16), m.data)
    with pytest.raises(ValueError, match="sizes must be"):  # columns would pass int32
        SparseConv(4, 1 << 28, 3, 3, 1, ptr, idx, m.data)
    conv = SparseConv(4, 2, 3, 3, 1, ptr, idx, m.data)
    x, y = np.ones((1, 2, 5, 5), np.float32), np.empty((1, 4, 3, 3), np.float32)
    conv.run(x, y, x.shape, (1, 1), (1, 1), (0, 0, 0, 0))
    np.testing.assert_array_equal(y, 18)
    for shape, strides, pads, message in [
        ((1, 3, 5, 5), (1, 1), (0, 0, 0, 0), "3 channels"),
        ((1, 2, 5, 4), (1, 1), (0, 0, 0, 0), "x must have"),
        ((1, 2, 5, 5), (1, 1), (0, 0, 1, 0), "y 48"),
        ((1, 2, 5, 5), (0, 1), (0, 0, 0, 0), "out of bounds"),
        ((1, 2, 5, 5), (1, 1), (-1, 0, 0, 0), "out of bounds"),
        ((1, 2, 2, 5), (1, 1), (0, 0, 0, 0), "smaller than the kernel"),
    ]:
        with pytest.raises(ValueError, match=message):
            conv.run(x, y, shape, strides, (1, 1), pads)
    with pytest.raises(ValueError, match="out of bounds"):
        conv.run(x, y, x.shape, (1, 1), (1, 1), (0, 0, 0, 0), begin=0, end=2)
    with pytest.raises(TypeError, match="float32"):
        conv.run(x.astype(np.float64), y, x.shape, (1, 1), (1, 1), (0, 0, 0, 0))
    # 2^23 channels with 2^19 padding on every side: the work buffer's size would overflow
    wide = SparseConv(1, 1 << 23, 1, 1, 1, np.array([0, 1], np.int64), np.array([0], np.int32),
                      np.ones(1, np.float32))
    x = np.zeros((1, 1 << 23, 1, 1), np.float32)
    with pytest.raises(ValueError, match="too large for a work buffer"):
        wide.run(x, np.zeros(1, np.float32), x.shape, (1, 1), (1, 1), (1 << 19,) * 4)


def test_winograd_conv_refuses_bad_calls():
    x, u, out = np.ones((2, 3, 6, 6), np.float32), np.ones((16, 3, 4), np.float32), np.zeros((2, 4, 6, 6), np.float32)
    shape = (2, 3, 6, 6, 4, 6, 6)
    native.winograd_conv(x, u, out, shape, (1, 1), 128)
    for bad, pads, band_tiles, message in [
        ((2, 3, 6, 5, 4, 6, 6), (1, 1), 128, "x must have"),
        ((2, 3, 6, 6, 5, 6, 6), (1, 1), 128, "u 240"),
        ((2, 3, 6, 6, 4, 6, 7), (1, 1), 128, "out 336"),
        (shape, (-1, 1), 128, "out of bounds"),
        (shape, (1, 1), 0, "out of bounds"),
        ((0, 3, 6, 6, 4, 6, 6), (1, 1), 128, "out of bounds"),
    ]:
        with pytest.raises(ValueError, match=message):
            native.winograd_conv(x, u, out, bad, pads, band_tiles)
    with pytest.raises(ValueError, match="bias 4"):
        native.winograd_conv(x, u, out, shape, (1, 1), 128, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="thread count"):
        native.winograd_conv(x, u, out, shape, (1, 1), 128, None, False, 0)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_pool_matches_numpy(data):
    """pool2d against the numpy reductions it replaces (max: -inf padding; average: zero padding over a
    divisor), NaN included."""
    from dcm.runtime.cpu.windows import reduce_windows

    d = data.draw
    kernel, strides = (d(st.integers(1, 4)), d(st.integers(1, 4))), (d(st.integers(1, 3)), d(st.integers(1, 3)))
    dilations = (d(st.integers(1, 2)), d(st.integers(1, 2)))
    pads = [d(st.integers(0, 3)) for _ in range(4)]
    n, c, h, w = d(st.integers(1, 2)), d(st.integers(1, 3)), d(st.integers(1, 12)), d(st.integers(1, 40))
    if h + pads[0] + pads[2] < (kernel[0] - 1) * dilations[0] + 1 or w + pads[1] + pads[3] < (kernel[1] - 1) * dilations[1] + 1:
        return
    rng = np.random.default_rng(d(st.integers(0, 2**16)))
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    if d(st.booleans()):
        x[0, 0, rng.integers(h), rng.integers(w)] = np.nan
    begin, end = pads[:2], pads[2:]
    ref = reduce_windows(x, kernel, strides, dilations, begin, end, np.maximum, -np.inf)
    y = np.full(ref.shape, 7, np.float32)
    with switched(native.set_simd, d(st.booleans())):
        native.pool2d(x, y, x.shape, kernel, strides, dilations, (*begin, *end))
        np.testing.assert_array_equal(y, ref)
        divisor = rng.integers(1, 9, ref.shape[2:]).astype(np.float32)
        ref = reduce_windows(x, kernel, strides, dilations, begin, end, np.add) / divisor
        native.pool2d(x, y, x.shape, kernel, strides, dilations, (*begin, *end), divisor.reshape(-1), 2)
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", [(2, 2), (3, 3), (2, 3), (3, 2)])
@pytest.mark.parametrize("pads", [(0, 0, 0, 0), (1, 1, 1, 1), (0, 1, 1, 0), (1, 0, 0, 1)])
@pytest.mark.parametrize("width", [1, 2, 15, 32, 33, 64, 97])
def test_stride_2_max_pools_match_numpy(kernel, pads, width):
    """The stride-2 max pools of 2 or 3 rows and columns (pool_max_s2_avx512 on AVX-512: 16 outputs from
    two or three vectors of column maxima, masked at the row's ends) against numpy, NaN and -inf
    included, with the generic path too."""
    from dcm.runtime.cpu.windows import reduce_windows

    rng = np.random.default_rng(width)
    x = rng.standard_normal((2, 3, 7, width)).astype(np.float32)
    x[0, 1, 3, width // 2] = np.nan
    x[1, 2, 0, 0] = -np.inf
    begin, end = list(pads[:2]), list(pads[2:])
    if width + pads[1] + pads[3] < kernel[1]:
        return
    ref = reduce_windows(x, kernel, (2, 2), (1, 1), begin, end, np.maximum, -np.inf)
    for simd in (True, False):
        y = np.full(ref.shape, 7, np.float32)
        with switched(native.set_simd, simd):
            native.pool2d(x, y, x.shape, kernel, (2, 2), (1, 1), pads, None, 2)
        np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize("average", [False, True])
def test_pool_threads_give_the_serial_result(average):
    """Output rows split over the native pool (many ranges, a plane cut between two of them) give
    the serial result bit for bit."""
    x = np.random.default_rng(0).standard_normal((2, 8, 201, 203)).astype(np.float32)  # ~7 ranges of rows
    args = (x.shape, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1))
    divisor = np.full(101 * 102, 9, np.float32) if average else None
    serial, split = np.empty((2, 8, 101, 102), np.float32), np.empty((2, 8, 101, 102), np.float32)
    native.pool2d(x, serial, *args, divisor, 1)
    native.pool2d(x, split, *args, divisor, 2)
    np.testing.assert_array_equal(split, serial)


def test_pool_refuses_bad_calls():
    x, y = np.ones((1, 2, 6, 6), np.float32), np.zeros((1, 2, 3, 3), np.float32)
    args = ((2, 2), (2, 2), (1, 1), (0, 0, 0, 0))
    native.pool2d(x, y, x.shape, *args)
    for shape, kernel, pads, message in [((1, 2, 6, 5), (2, 2), (0, 0, 0, 0), "x must have"),
                                         ((1, 2, 6, 6), (9, 2), (0, 0, 0, 0), "smaller than the kernel"),
                                         ((1, 2, 6, 6), (2, 2), (0, -1, 0, 0), "out of bounds"),
                                         ((1, 2, 6, 6), (0, 2), (0, 0, 0, 0), "out of bounds")]:
        with pytest.raises(ValueError, match=message):
            native.pool2d(x, y, shape, kernel, (2, 2), (1, 1), pads)
    with pytest.raises(ValueError, match="divisor 9"):
        native.pool2d(x, y, x.shape, *args, np.ones(8, np.float32))


@pytest.mark.parametrize("path", ["avx512", "avx2", "portable"])
@pytest.mark.parametrize("h, w, kernel, strides, dilations, pads", [
    (7, 7, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),  # ResNet-18's last stage: 7 runs of 7 per row
    (14, 14, (3, 3), (2, 1), (1, 1), (1, 1, 1, 1)),  # vertical stride 2: 7 rows of 14
    (5, 16, (3, 3), (1, 1), (1, 2), (0, 2, 3, 2)),  # 16 outputs a row: a whole register, dilation 2
    (6, 15, (2, 3), (1, 1), (2, 1), (2, 0, 1, 2)),  # 15 outputs, right padding only
    (3, 2, (1, 5), (1, 1), (1, 1), (0, 4, 0, 0)),  # 2 outputs; taps 0-1 only read padding (empty masks)
    (4, 17, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),  # 17 outputs: past one register, the plain copies
    (14, 14, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1)),  # ResNet-18's stride-2 256->512: 7 of every other value
    (9, 31, (3, 3), (1, 2), (1, 1), (1, 1, 1, 1)),  # stride 2, 16 outputs spanning 31 values: both loads
    (6, 30, (2, 3), (1, 3), (1, 1), (0, 2, 0, 1)),  # stride 3, 11 outputs
    (5, 35, (1, 3), (1, 3), (1, 1), (0, 1, 0, 1)),  # stride 3, 12 outputs spanning 34 values: the plain copies
    # longer rows at stride 2: 8 outputs from two loads on AVX2, the last ones (and the padding) one by one
    (5, 57, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1)),  # 29 outputs, the last tap's reads end on the row's last value
    (4, 50, (3, 3), (1, 2), (1, 1), (0, 0, 0, 0)),  # 24 outputs: three whole vectors' worth, no padding
    (3, 41, (2, 5), (1, 2), (1, 2), (0, 3, 1, 2)),  # dilation 2, padding on both sides
])
def test_im2col_rows(h, w, kernel, strides, dilations, pads, path):
    """im2col2d against numpy's padded windows, on every path: rows of at most 16 outputs whose inputs span
    at most 32 values go by masked loads (and a permute at stride 2 or more) and one store each on AVX-512
    (the small-plane sparse layers' columns); longer stride-2 rows by the AVX2 shuffles."""
    rng = np.random.default_rng(h * w)
    x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr) = kernel, strides, dilations, pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    oh, ow = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1, (w + pl + pr - (kw - 1) * dw - 1) // sw + 1
    want = np.stack([xp[:, c, i * dh : i * dh + (oh - 1) * sh + 1 : sh, j * dw : j * dw + (ow - 1) * sw + 1 : sw]
                     for c in range(3) for i in range(kh) for j in range(kw)]).reshape(3 * kh * kw, -1)
    cols = np.full((3 * kh * kw, 2 * oh * ow), np.nan, np.float32)
    with switched(native.set_avx512, path == "avx512"), switched(native.set_simd, path != "portable"):
        native.im2col2d(x, cols, x.shape, kernel, strides, dilations, pads, threads=2)
    np.testing.assert_array_equal(cols, want)


def test_set_simd_returns_the_previous_setting():
    assert native.set_simd(False) is True
    assert native.set_simd(True) is False


HUGE = 2**62 + 1  # times 4 (or 16) wraps to 4 (or 16) in 64 bits: a wrapped product would match a tiny buffer


def _ones(n):
    return np.ones(n, np.float32)


def _conv_1x1():
    return SparseConv(1, 1, 1, 1, 1, np.array([0, 1], np.int64), np.array([0], np.int32), _ones(1))


def _matrix():
    w, arrays = _parts()
    return SparseMatrix(*w.shape, *arrays)


# One call per kernel whose sizes multiply past 2^64 to exactly the given buffers' lengths; each must be
# refused before the kernel reads anything (an unchecked product let them read far past the buffers).
HUGE_CALLS = {
    "SparseConv.run": lambda: _conv_1x1().run(_ones(4), _ones(4), (HUGE, 1, 2, 2), (1, 1), (1, 1), (0, 0, 0, 0)),
    "SparseConv.run samples": lambda: _conv_1x1().run(_ones(4), _ones(4), (1, 1, 2, 2), (1, 1), (1, 1), (0, 0, 0, 0),
                                                      None, False, 0, HUGE),
    "pool2d": lambda: native.pool2d(_ones(4), _ones(4), (HUGE, 1, 2, 2), (1, 1), (1, 1), (1, 1), (0, 0, 0, 0)),
    "pool2d channels": lambda: native.pool2d(_ones(4), _ones(4), (4, HUGE, 1, 1), (1, 1), (1, 1), (1, 1),
                                             (0, 0, 0, 0)),
    "winograd_conv": lambda: native.winograd_conv(_ones(4), _ones(16), _ones(4), (HUGE, 1, 2, 2, 1, 2, 2), (0, 0), 1),
    "winograd_conv channels": lambda: native.winograd_conv(_ones(4), _ones(16), _ones(4), (1, HUGE, 2, 2, 1, 2, 2),
                                                           (0, 0), 1),
    "SparseMatrix.matvec": lambda: _matrix().matvec(_ones(53), _ones(37), None, False, "csr", 0, HUGE),
    "SparseMatrix.matmat": lambda: _matrix().matmat(np.ones((53, 4), np.float32), np.ones((37, 4), np.float32), None,
                                                    False, 0, HUGE),
    "SparseMatrix.matmat_rows": lambda: _matrix().matmat_rows(np.ones((4, 53), np.float32), np.ones((4, 37), np.float32),
                                                              None, False, 0, HUGE),
    "depthwise2d": lambda: native.depthwise2d(_ones(4), _ones(4), _ones(1), (HUGE, 1, 2, 2), (1, 1), (1, 1), (1, 1),
                                              (0, 0, 0, 0)),
    "depthwise2d channels": lambda: native.depthwise2d(_ones(4), _ones(4), _ones(1), (1, HUGE, 2, 2), (1, 1), (1, 1),
                                                       (1, 1), (0, 0, 0, 0)),
    "depthwise2d multiplier": lambda: native.depthwise2d(_ones(4), _ones(4), _ones(1), (1, 1, 2, 2), (1, 1), (1, 1),
                                                         (1, 1), (0, 0, 0, 0), HUGE),
    "conv_lanes2d": lambda: native.conv_lanes2d(_ones(4), _ones(4), _ones(1), (HUGE, 1, 2, 2), (1, 1), (1, 1), (1, 1),
                                                (0, 0, 0, 0), 1),
    "conv_lanes2d outputs": lambda: native.conv_lanes2d(_ones(4), _ones(4), _ones(1), (1, 1, 2, 2), (1, 1), (1, 1),
                                                        (1, 1), (0, 0, 0, 0), HUGE),
    "im2col2d": lambda: native.im2col2d(_ones(4), _ones(4), (HUGE, 1, 2, 2), (1, 1), (1, 1), (1, 1), (0, 0, 0, 0)),
    "recurrent_scan": lambda: native.recurrent_scan("RNN", np.ones((1, 1, 1), np.float32),
                                                    np.ones((1, 1, 1, 1), np.float32), np.ones((1, 1), np.float32),
                                                    None, np.array([HUGE], np.int64), 0, False,
                                                    rt=np.ones((1, 1), np.float32)),
    "activate": lambda: native.activate(_ones(4), _ones(4), "relu", bias=_ones(4), plane=HUGE),
    "layer_norm": lambda: native.layer_norm(_ones(4), _ones(4), HUGE, _ones(4)),
    "softmax": lambda: native.softmax(_ones(4), _ones(4), HUGE),
    # resize2d takes no sizes, only arrays (whose shapes numpy bounds): its largest index is refused
    "resize2d": lambda: native.resize2d(np.ones((1, 1, 1), np.float32), np.ones((1, 1, 1), np.float32),
                                        np.array([[2**31 - 1]], np.int32), np.ones((1, 1), np.float32),
                                        np.zeros((1, 1), np.int32), np.ones((1, 1), np.float32)),
    "col2im2d": lambda: native.col2im2d(np.ones((1, 1, 1, 1, 1, 1), np.float32), np.ones((1, 1, 1, 1), np.float32),
                                        (HUGE, 1), (1, 1), (0, 0)),
    "pointwise_conv": lambda: native.pointwise_conv(_ones(4), _ones(4), _ones(8), (HUGE, 1, 1, 1)),
    "transpose2d": lambda: native.transpose2d(_ones(4), _ones(4), (HUGE, 2, 2)),
    "transpose2d cols": lambda: native.transpose2d(_ones(4), _ones(4), (1, 2, HUGE)),
    "concat": lambda: native.concat([_ones(4)], _ones(4), HUGE),
    "depthwise_nhwc": lambda: native.depthwise_nhwc(_ones(4), _ones(4), _ones(1), (HUGE, 2, 2, 1), (1, 1), (1, 1),
                                                    (1, 1), (0, 0, 0, 0)),
    "depthwise_nhwc product": lambda: native.depthwise_nhwc(_ones(4), _ones(4), _ones(1), (2**40, 2**20, 2**20, 4),
                                                            (1, 1), (1, 1), (1, 1), (0, 0, 0, 0)),
    "global_average_nhwc": lambda: native.global_average_nhwc(_ones(4), _ones(4), (HUGE, 1, 4)),
    "global_average_nhwc product": lambda: native.global_average_nhwc(_ones(4), _ones(4), (2**40, 2**22, 1)),
    "window_rows": lambda: native.window_rows(_ones(4), _ones(4), (HUGE, 1, 1, 1), (1, 1), (1, 1), (1, 1), (0, 0, 0, 0)),
    "window_rows product": lambda: native.window_rows(_ones(4), _ones(4), (2**40, 2**20, 2**20, 4), (1, 1), (1, 1),
                                                      (1, 1), (0, 0, 0, 0)),
    "conv_nhwc_out": lambda: native.conv_nhwc_out(_ones(4), _ones(4), _ones(16), (HUGE, 1, 2, 2, 1), (1, 1), (1, 1),
                                                  (1, 1), (0, 0, 0, 0)),
    "conv_nhwc_out product": lambda: native.conv_nhwc_out(_ones(4), _ones(4), _ones(16), (2**40, 2**20, 2**20, 4, 1),
                                                          (1, 1), (1, 1), (1, 1), (0, 0, 0, 0)),
    # gemm takes only arrays: a broadcast one (no memory behind it) with more columns than sgemm's int32
    "gemm": lambda: native.gemm(np.broadcast_to(np.float32(1), (1, 2**31)), np.broadcast_to(np.float32(1), (2**31, 1)),
                                np.ones((1, 1), np.float32)),
    "attention": lambda: native.attention(np.broadcast_to(np.float32(1), (1, 2**31)),
                                          np.broadcast_to(np.float32(1), (2**31, 1)), np.ones((1, 1), np.float32),
                                          np.ones((1, 1), np.float32)),
    "gemm_packed": lambda: native.gemm_packed(np.broadcast_to(np.float32(1), (1, 2**60)), _ones(32),
                                              np.ones((1, 1), np.float32)),
    "SparseMatrix": lambda: SparseMatrix(HUGE, 1, np.zeros(2, np.int64), np.zeros(0, np.int32), _ones(0)),
    "SparseConv": lambda: SparseConv(1, HUGE, 1, 1, 1, np.array([0, 1], np.int64), np.array([0], np.int32), _ones(1)),
}


@pytest.mark.parametrize("simd", [True, False])
@pytest.mark.parametrize("name, call", HUGE_CALLS.items(), ids=HUGE_CALLS.keys())
def test_huge_sizes_are_refused_before_any_read(name, call, simd):
    if getattr(native, name.split()[0].split(".")[0], None) is None:
        pytest.skip(f"this build has no {name.split()[0]}")
    with switched(native.set_simd, simd), \
            pytest.raises((ValueError, OverflowError), match="overflow|out of bounds|outside|must be"):
        call()


def test_every_kernel_has_a_huge_size_case():
    """A kernel added to native.NAMES needs its case above (size checks made with size_product)."""
    covered = {name.split()[0].split(".")[0] for name in HUGE_CALLS}
    assert {name for name in native.NAMES if getattr(native, name) is not None} <= covered


def test_kernel_objects_are_immutable():
    w, arrays = _parts()
    m = _matrix()
    with pytest.raises(TypeError, match="immutable"):
        m.__init__(*w.shape, *arrays)
    conv = _conv_1x1()
    with pytest.raises(TypeError, match="immutable"):
        conv.__init__(1, 1, 1, 1, 1, np.array([0, 1], np.int64), np.array([0], np.int32), _ones(1))
    x, y = np.ones(53, np.float32), np.zeros(37, np.float32)
    m.matvec(x, y)  # still whole after the refused calls
    np.testing.assert_allclose(y, w @ x, rtol=1e-5)
    with pytest.raises(ValueError, match="no CSC form"):  # made by __new__ alone: holds nothing, reads nothing
        SparseMatrix.__new__(SparseMatrix).matvec(np.ones(0, np.float32), np.ones(0, np.float32))
    with pytest.raises(ValueError, match="never initialized"):
        SparseConv.__new__(SparseConv).run(_ones(1), _ones(1), (1, 0, 1, 1), (1, 1), (1, 1), (0, 0, 0, 0))


def test_reinit_racing_a_product_is_refused():
    """One thread runs products with the GIL released while another calls __init__ on the same objects:
    re-initializing freed the arrays the product was reading. Now every __init__ is refused and every
    product stays right."""
    import threading

    w, arrays = _parts(400, 1500, 0.3, wide=True)  # 180k weights: each product releases the GIL for a while
    m = SparseMatrix(*w.shape, *arrays)
    xt = np.random.default_rng(4).standard_normal((1500, 16)).astype(np.float32)
    expected = w @ xt
    kw = np.ones((8, 8, 3, 3), np.float32)
    kc = sp.csr_array(kw.reshape(8, -1))
    conv_args = (8, 8, 3, 3, 1, kc.indptr.astype(np.int64), kc.indices.astype(np.int32), kc.data)
    conv = SparseConv(*conv_args)
    x = np.ones((2, 8, 64, 64), np.float32)
    conv_expected = np.empty((2, 8, 62, 62), np.float32)
    conv.run(x, conv_expected, x.shape, (1, 1), (1, 1), (0, 0, 0, 0))
    stop, wrong, done, attempts = threading.Event(), [], [], 0

    def products():
        yt, y = np.empty((400, 16), np.float32), np.empty_like(conv_expected)
        while not stop.is_set():
            m.matmat(xt, yt)
            conv.run(x, y, x.shape, (1, 1), (1, 1), (0, 0, 0, 0))
            if not (np.allclose(yt, expected, rtol=1e-4, atol=1e-3) and np.array_equal(y, conv_expected)):
                wrong.append(True)
            done.append(True)

    other = (*w.shape, *_parts(400, 1500, 0.3, seed=1, wide=True)[1])
    worker = threading.Thread(target=products)
    worker.start()
    try:
        while len(done) < 10 or attempts <= 20:  # re-initializations all through ten rounds of products
            for obj, args in ((m, other), (conv, conv_args)):
                with pytest.raises(TypeError, match="immutable"):
                    obj.__init__(*args)
                attempts += 1
    finally:
        stop.set()
        worker.join()
    assert attempts > 20 and not wrong
