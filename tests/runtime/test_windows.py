"""im2col's four ways of building columns (the compiled im2col2d; without it contiguous runs, window
gather, cached flat index) agree with a direct float64 convolution, and the index cache stays bounded."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dcm.runtime.cpu import native, windows


def _direct(x, w, strides, dilations, begin, end):
    """Reference: a loop over kernel offsets on the padded input, [N, C_out, OH, OW]."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (begin[0], end[0]), (begin[1], end[1])))
    kh, kw = w.shape[2:]
    oh = (xp.shape[2] - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    ow = (xp.shape[3] - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    out = 0.0
    for i in range(kh):
        for j in range(kw):
            r, c = i * dilations[0], j * dilations[1]
            patch = xp[:, :, r : r + strides[0] * oh : strides[0], c : c + strides[1] * ow : strides[1]]
            out = out + np.einsum("nchw,kc->nkhw", patch, w[:, :, i, j])
    return out


def _conv(x, w, strides, dilations, begin, end, cache):
    cols, oh, ow, row = windows.im2col(x, 1, w.shape[2:], strides, dilations, begin, end, cache)
    y = w.reshape(w.shape[0], -1) @ cols[0].reshape(x.shape[1] * w.shape[2] * w.shape[3], -1)
    y = y.reshape(w.shape[0], x.shape[0], oh, row)
    return y[..., :ow].transpose(1, 0, 2, 3)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 4), h=st.integers(1, 12), w=st.integers(1, 12),
       k=st.sampled_from([(1, 1), (2, 3), (3, 3), (5, 5)]), s=st.sampled_from([(1, 1), (2, 1), (2, 2)]),
       d=st.sampled_from([(1, 1), (2, 1)]), pads=st.lists(st.integers(0, 3), min_size=4, max_size=4),
       big=st.booleans())
def test_every_path_matches_direct_convolution(n, c, h, w, k, s, d, pads, big):
    begin, end = pads[:2], pads[2:]
    if h + begin[0] + end[0] < (k[0] - 1) * d[0] + 1 or w + begin[1] + end[1] < (k[1] - 1) * d[1] + 1:
        return
    rng = np.random.default_rng(n + 10 * c + 100 * h + 1000 * w)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((3, c, *k)).astype(np.float32)
    ref = _direct(x, wt, s, d, begin, end)
    limits = windows.RUN_MIN_ELEMENTS, windows.RUN_MIN_USED, native.im2col2d
    if big:  # every input takes the contiguous-run path (strided ones through stride phases)
        windows.RUN_MIN_ELEMENTS, windows.RUN_MIN_USED = 1, 0.0
    try:
        for compiled in (limits[2], None):  # the compiled columns, then numpy's
            native.im2col2d = compiled
            for cache in (None, {}):
                got = _conv(x, wt, s, d, begin, end, cache)
                np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(ref).max())))
    finally:
        windows.RUN_MIN_ELEMENTS, windows.RUN_MIN_USED, native.im2col2d = limits


def test_index_cache_is_bounded_and_reused(monkeypatch):
    monkeypatch.setattr(native, "im2col2d", None)  # the numpy paths
    cache = {}
    x = np.ones((1, 2, 6, 6), np.float32)
    windows.im2col(x, 1, (3, 3), (1, 1), (1, 1), [0, 0], [0, 0], cache)
    (index, _, _), = cache.values()
    windows.im2col(x, 1, (3, 3), (1, 1), (1, 1), [0, 0], [0, 0], cache)
    assert next(iter(cache.values()))[0] is index
    for size in range(7, 7 + 2 * windows.INDEX_CACHE_SHAPES):
        windows.im2col(np.ones((1, 2, size, size), np.float32), 1, (3, 3), (1, 1), (1, 1), [0, 0], [0, 0], cache)
        assert len(cache) <= windows.INDEX_CACHE_SHAPES


def test_large_inputs_are_not_indexed(monkeypatch):
    monkeypatch.setattr(native, "im2col2d", None)
    cache = {}
    x = np.zeros((1, 64, 66, 66), np.float32)  # 64 * 9 * 64 * 64 column entries: over the index limit
    windows.im2col(x, 1, (3, 3), (2, 2), (1, 1), [0, 0], [0, 0], cache)
    assert not cache


def test_compiled_columns_on_threads_match_one_thread():
    """im2col2d's rows split over the native pool: the same column matrix as one thread."""
    if native.im2col2d is None:
        return
    x = np.random.default_rng(4).standard_normal((2, 37, 29, 31)).astype(np.float32)
    one = windows.im2col(x, 1, (3, 3), (2, 1), (1, 1), [1, 0], [1, 2], None, 1)[0].copy()
    for threads in (2, 3):
        np.testing.assert_array_equal(windows.im2col(x, 1, (3, 3), (2, 1), (1, 1), [1, 0], [1, 2], None, threads)[0],
                                      one)
