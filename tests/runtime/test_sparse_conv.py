"""The direct sparse convolution (SparseConv) on the paths the CPU may take (AVX-512, AVX2, portable
C): equal to onnxruntime's dense convolution from empty to full weights, on the shapes that reach its
tiles, input-channel blocks and kept weight plans, with the NaNs that pruned weights hide."""
import numpy as np
import pytest
import scipy.sparse as sp

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from dcm.converters import ConvertOptions, from_onnx  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from dcm.runtime.cpu import conv, native  # noqa: E402
from tests.runtime.switches import switched  # noqa: E402
from tests.runtime.test_conv import _model, _weight  # noqa: E402

pytestmark = pytest.mark.skipif(native.SparseConv is None, reason="built without the native kernels")
PATHS = ["avx512", "avx2", "portable"]


def _run_on(path, fn):
    with switched(native.set_simd, path != "portable"), switched(native.set_avx512, path == "avx512"):
        return fn()


# (out, in, kernel, input H x W, strides, pads, batch): ResNet-like planes (several tiles and input-channel
# blocks at 40x40; one tile at 7x7), odd widths and asymmetric pads, one segment a row in unpadded
# rows (16 outputs in rows of 18, unaligned loads) and vertical stride 2 (segments not one run), a 5x5 kernel;
# horizontal strides 2 and 3 (the AVX-512 path's phases: ResNet's strided 3x3, ConvNeXt's 2x2
# downsampling, an odd stride with uneven pads).
SHAPES = [
    (24, 40, 3, (40, 40), [1, 1], [1, 1, 1, 1], 1),
    (16, 64, 3, (7, 7), [1, 1], [1, 1, 1, 1], 3),
    (12, 20, 3, (17, 23), [1, 1], [0, 2, 1, 0], 1),
    (12, 20, 3, (17, 16), [1, 1], [0, 1, 1, 1], 1),
    (10, 18, 3, (21, 19), [2, 1], [1, 1, 1, 1], 3),
    (8, 12, 5, (15, 33), [1, 1], [2, 2, 2, 2], 1),
    (16, 24, 3, (38, 37), [2, 2], [1, 1, 1, 1], 2),
    (10, 12, 2, (28, 28), [2, 2], [0, 0, 0, 0], 1),
    (8, 9, 3, (20, 50), [1, 3], [1, 0, 2, 2], 1),
]


@pytest.mark.parametrize("density", [0.0, 0.05, 0.3, 0.6, 1.0])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}k{s[2]}-{s[3][0]}x{s[3][1]}-s{s[4][0]}-n{s[6]}")
def test_matches_onnxruntime_on_every_path(shape, density):
    out, cin, k, (h, w), strides, pads, n = shape
    m = _model(_weight((out, cin, k, k), density), [n, cin, h, w], {"strides": strides, "pads": pads})
    x = np.random.default_rng(1).standard_normal((n, cin, h, w)).astype(np.float32)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    model = from_onnx(m, ConvertOptions(exact=True))
    outs = {}
    strided = strides[1] > 1  # direct on AVX-512 CPUs only; the portable kernel on the AVX2 path
    for path in PATHS:
        sess = InferenceSession(model, kernels="sparse", threads=1)
        assert sess.describe()[0]["kernel"] == ("direct" if not strided or native.batched_simd() == "avx512"
                                                else "sparse")
        outs[path] = _run_on(path, lambda: sess.run(None, {"x": x})[0])
        np.testing.assert_allclose(outs[path], ref, rtol=1e-4, atol=1e-4, err_msg=path)
    oh, ow = outs["avx512"].shape[2:]
    if ow >= 16 and oh * -(-ow // 16) % 16 not in (1, 2, 3, 4) and not strided:
        # same sums in the same order, on planes of whole rows of 16-lane segments (not flat) where no
        # tile has 4 segments or fewer (the AVX-512 path sums those in two chains of alternate weights)
        np.testing.assert_array_equal(outs["avx512"], outs["avx2"])


@pytest.mark.parametrize("batch", [1, 3])  # each sample split by input, then output channels
@pytest.mark.parametrize("path", PATHS)
def test_two_threads_and_hidden_nans(batch, path):
    m = _model(_weight((20, 32, 3, 3), 0.3), [batch, 32, 30, 30], {"pads": [1, 1, 1, 1]})
    x = np.random.default_rng(2).standard_normal((batch, 32, 30, 30)).astype(np.float32)
    x[0, 5, 10, 11] = np.nan
    x[-1, 30, 29, 0] = np.inf
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)), kernels="sparse", threads=2)
    got = _run_on(path, lambda: sess.run(None, {"x": x})[0])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["groups", "tiles", "stride 2"])
def test_tiled_copies_on_one_and_two_threads(case):
    """At horizontal strides 1 and 2 each tile's input rows are copied block by block, on one thread and on
    two (split by channels, one range a thread, or past 2 MiB of copies by tiles): grouped weights (each
    group's own channels in the block), a 128x128 plane (64 tiles) and a stride-2 layer of odd sizes give
    onnxruntime's result, the same bits on one thread and two, with the NaN a pruned weight hides."""
    if case == "groups":
        w, x_shape, attrs = _weight((12, 8, 3, 3), 0.4), [2, 24, 20, 20], {"pads": [1, 1, 1, 1], "group": 3}
    elif case == "tiles":
        w, x_shape, attrs = _weight((16, 32, 3, 3), 0.3), [1, 32, 128, 128], {"pads": [1, 1, 1, 1]}
    else:
        w, x_shape, attrs = _weight((16, 24, 3, 3), 0.3), [2, 24, 37, 41], {"pads": [1, 1, 1, 1], "strides": [2, 2]}
    m = _model(w, x_shape, attrs)
    x = np.random.default_rng(6).standard_normal(x_shape).astype(np.float32)
    x[0, 9, 64 % x_shape[2], 5] = np.nan
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    model = from_onnx(m, ConvertOptions(exact=True))
    outs = {}
    for threads in (1, 2):
        sess = InferenceSession(model, kernels="sparse", threads=threads)
        # a horizontal stride takes the direct kernel only where the CPU has AVX-512, else im2col's sparse one
        assert sess.describe()[0]["kernel"] == ("direct" if case != "stride 2" or native.batched_simd() == "avx512"
                                                else "sparse")
        outs[threads] = _run_on("avx512", lambda: sess.run(None, {"x": x})[0])
        np.testing.assert_array_equal(np.isnan(outs[threads]), np.isnan(ref))
        np.testing.assert_allclose(outs[threads], ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(outs[1], outs[2])


@pytest.mark.parametrize("strides", [[1, 1], [2, 2], [1, 3]], ids=["tiled", "stride 2", "stride 3"])
@pytest.mark.parametrize("path", PATHS)
def test_batch_split_by_samples(strides, path):
    """Five samples on two threads: four go whole to a thread each (stride 3 on AVX-512, and every stride
    on the other paths, in a work buffer of the thread's own), the fifth split within itself. The same
    bits as on one thread, with the NaN and Inf of samples on either side of the split."""
    m = _model(_weight((16, 24, 3, 3), 0.3), [5, 24, 23, 29], {"pads": [1, 1, 1, 1], "strides": strides})
    x = np.random.default_rng(7).standard_normal((5, 24, 23, 29)).astype(np.float32)
    x[1, 3, 7, 8] = np.nan
    x[4, 20, 22, 0] = np.inf
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    model = from_onnx(m, ConvertOptions(exact=True))
    outs = {}
    for threads in (1, 2):
        sess = InferenceSession(model, kernels="sparse", threads=threads)
        outs[threads] = _run_on(path, lambda: sess.run(None, {"x": x})[0])
        np.testing.assert_array_equal(np.isnan(outs[threads]), np.isnan(ref))
        np.testing.assert_allclose(outs[threads], ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(outs[1][:4], outs[2][:4])


def _sparse_conv(w):
    m = sp.csr_array(w.reshape(w.shape[0], -1))
    return native.SparseConv(*w.shape, 1, m.indptr.astype(np.int64), m.indices.astype(np.int32), m.data)


@pytest.mark.parametrize("path", PATHS)
def test_kept_plan_follows_the_input_geometry(path):
    """One object, inputs of three sizes in turn (and back): the weight plan kept from one size must not
    serve another."""
    w = _weight((6, 16, 3, 3), 0.5)
    conv_ = _sparse_conv(w)
    for h, wd in [(9, 33), (30, 14), (9, 33), (5, 5)]:
        x = np.random.default_rng(h).standard_normal((1, 16, h, wd)).astype(np.float32)
        y, again = np.empty((1, 6, h, wd), np.float32), np.empty((1, 6, h, wd), np.float32)
        args = (x.shape, (1, 1), (1, 1), (1, 1, 1, 1))
        _run_on(path, lambda: conv_.run(x, y, *args))
        _run_on(path, lambda: _sparse_conv(w).run(x, again, *args))  # a new object: no kept plan
        np.testing.assert_array_equal(y, again)


def test_refuses_unsorted_indices():
    ptr, idx = np.array([0, 2], np.int64), np.array([3, 1], np.int32)
    with pytest.raises(ValueError, match="not sorted"):
        native.SparseConv(1, 1, 3, 3, 1, ptr, idx, np.ones(2, np.float32))


def test_refuses_a_work_buffer_past_int32_offsets():
    """One value padded to 2^20 x 2^20: the work plane would need offsets past int32, refused before any
    allocation."""
    one = native.SparseConv(1, 1, 1, 1, 1, np.array([0, 1], np.int64), np.array([0], np.int32),
                            np.ones(1, np.float32))
    x = np.ones((1, 1, 1, 1), np.float32)
    with pytest.raises(ValueError, match="too large for a work buffer"):
        one.run(x, np.zeros(1, np.float32), x.shape, (1, 1), (1, 1), (1 << 19,) * 4)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("size, stride", [(14, 2), (7, 1)])
def test_small_plane(path, size, stride):
    """A 7x7 output plane: with AVX-512 a strided direct layer runs im2col and the batched sparse
    product (conv.SMALL_PLANE_OUTPUTS), a stride-1 one the direct kernel's flat layout, elsewhere the
    direct kernel; all as onnxruntime, hidden NaNs included."""
    m = _model(_weight((48, 96, 3, 3), 0.3), [1, 96, size, size], {"pads": [1, 1, 1, 1], "strides": [stride] * 2})
    x = np.random.default_rng(4).standard_normal((1, 96, size, size)).astype(np.float32)
    x[0, 7, 3, 3] = np.nan
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)), kernels="sparse", threads=1)
    got = _run_on(path, lambda: sess.run(None, {"x": x})[0])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_tune_races_a_layer_held_dense():
    """32% dense: over the load-time sparse limit (held dense), under the direct kernel's AVX-512 limit,
    so tune=True races direct (from the dense array) against Winograd; the winner matches onnxruntime."""
    m = _model(_weight((64, 64, 3, 3), 0.32), [1, 64, 14, 14], {"pads": [1, 1, 1, 1]})
    x = np.random.default_rng(5).standard_normal((1, 64, 14, 14)).astype(np.float32)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)), tune=True, threads=1)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, rtol=1e-4, atol=1e-4)
    assert sess.describe()[0]["tuned"] in ("direct", "dense")
