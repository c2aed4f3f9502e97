"""The compiled channels-last kernels (_nhwc.c): depthwise_nhwc matches a float64 numpy depthwise
convolution over taps for kernels 1x1 to 7x7, strides 1-3, dilations 1-2, pads from none to past the
kernel's reach, channel counts off the 16-lane vector, tiny planes, batches, every activation and
bias or none, on the AVX-512 (16 channels a vector), AVX2 (8) and portable paths, 1 and 2 threads giving
the same bytes;
global_average_nhwc matches numpy's mean; bad sizes, lengths, overlapping buffers and activations get a
ValueError before any read."""
import contextlib

import numpy as np
import pytest

from dcm.runtime.cpu import native
from tests.runtime.activations import ALL, activation
from tests.runtime.switches import switched

pytestmark = pytest.mark.skipif(native.depthwise_nhwc is None, reason="built without the channels-last kernels")

ACTS = [None, *ALL]


def _out_size(h, w, kernel, strides, dilations, pads):
    """ONNX Conv's output plane (floor)."""
    return ((h + pads[0] + pads[2] - (kernel[0] - 1) * dilations[0] - 1) // strides[0] + 1,
            (w + pads[1] + pads[3] - (kernel[1] - 1) * dilations[1] - 1) // strides[1] + 1)


def _reference(x, w, strides, dilations, pads, bias=None, act=None):
    """A sum over the kernel's taps of strided views of the zero-padded input, in float64."""
    n, h, wd, c = x.shape
    kh, kw, _ = w.shape
    (sh, sw), (dh, dw), (top, left, bottom, right) = strides, dilations, pads
    padded = np.zeros((n, h + top + bottom, wd + left + right, c))
    padded[:, top:top + h, left:left + wd] = x
    oh, ow = _out_size(h, wd, (kh, kw), strides, dilations, pads)
    y = np.zeros((n, oh, ow, c)) if bias is None else np.broadcast_to(bias.astype(np.float64), (n, oh, ow, c)).copy()
    for i in range(kh):
        for j in range(kw):
            view = padded[:, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
            y += view * w[i, j].astype(np.float64)
    return activation(act, y).astype(np.float32)


def _run(x, w, strides, dilations, pads, bias=None, act=None, threads=1):
    n, h, wd, c = x.shape
    kh, kw, _ = w.shape
    y = np.full((n, *_out_size(h, wd, (kh, kw), strides, dilations, pads), c), np.nan, np.float32)
    native.depthwise_nhwc(x, y, w, x.shape, (kh, kw), strides, dilations, pads, bias, act, threads)
    return y


def _random_window(rng, k, max_h, max_w):
    """(N, H, W, stride, dilation, pads) of a random layer with a k x k kernel: N 1 or 3, strides 1-3,
    dilations 1-2, pads from 0 to past the kernel's reach, the padded input at least the kernel's span."""
    n = int(rng.choice([1, 3]))
    s, d = int(rng.integers(1, 4)), int(rng.integers(1, 3))
    h, w = int(rng.integers(1, max_h)), int(rng.integers(1, max_w))
    pads = tuple(int(v) for v in rng.integers(0, k + 2, 4))
    span = (k - 1) * d + 1
    if h + pads[0] + pads[2] < span:
        pads = (pads[0] + span, *pads[1:])
    if w + pads[1] + pads[3] < span:
        pads = (pads[0], pads[1] + span, *pads[2:])
    return n, h, w, s, d, pads


def _cases():
    """Random layer geometries (fixed seed): every kernel size, stride, dilation and C of the brief, and
    pads from 0 to past the kernel's reach."""
    rng = np.random.default_rng(5)
    cases = []
    for c in (1, 8, 16, 17, 24, 40, 96):
        for k in (1, 3, 5, 7):
            n, h, w, s, d, pads = _random_window(rng, k, 24, 24)
            cases.append((n, h, w, c, (k, k), (s, s), (d, d), pads))
    cases += [(1, 1, 1, 17, (1, 1), (1, 1), (1, 1), (0, 0, 0, 0)), (1, 1, 1, 24, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
              (3, 2, 3, 40, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1)), (1, 2, 3, 8, (5, 5), (1, 2), (2, 1), (4, 2, 5, 3)),
              (1, 28, 28, 96, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)), (1, 14, 14, 40, (5, 5), (2, 2), (1, 1), (1, 2, 2, 1)),
              (2, 9, 37, 17, (3, 5), (1, 3), (2, 1), (0, 3, 2, 0))]
    # MobileNet's, EfficientNet's and ConvNeXt's kernels (compiled with the width and stride as constants):
    # rows of runs of 8 output pixels, then of 4, 3 and 2 and a single pixel (7-wide rows: 4 + 3; 14: 8 + 4 +
    # 2; 13: 8 + 4 + 1), C whole vectors and not, single pixels 4 vectors at a time
    cases += [(1, 7, w, c, (k, k), (s, s), (1, 1), (k // 2,) * 4)
              for k, s in ((3, 1), (3, 2), (5, 1), (5, 2), (7, 1))
              for w, c in ((30, 32), (47, 24), (48, 16), (9, 72), (7, 40), (13, 24), (14, 16))]
    return cases


CASES = _cases()
PATHS = ["avx512", "avx2", "portable"]  # on a CPU without AVX-512 the first is the AVX2 path again


@contextlib.contextmanager
def _path(path):
    """The channels-last kernels' AVX-512, AVX2 or portable C path (set_avx512, set_simd)."""
    with switched(native.set_nhwc_simd, path != "portable"), switched(native.set_nhwc_avx512, path == "avx512"):
        yield


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "n{}h{}w{}c{}-k{}s{}d{}-p{}".format(*c[:4], *(c[4:7]), c[7]))
def test_depthwise_matches_numpy(case, path):
    n, h, w, c, kernel, strides, dilations, pads = case
    rng = np.random.default_rng(hash(case) % 2**32)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    wt = rng.standard_normal((*kernel, c)).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    with _path(path):
        for i, act in enumerate(ACTS):
            b = bias if i % 2 else None
            got = _run(x, wt, strides, dilations, pads, b, act)
            np.testing.assert_allclose(got, _reference(x, wt, strides, dilations, pads, b, act), rtol=1e-5, atol=1e-5,
                                       err_msg=str(act))
            np.testing.assert_array_equal(_run(x, wt, strides, dilations, pads, b, act, threads=2), got)


@pytest.mark.parametrize("path", PATHS)
def test_depthwise_threads_split_a_large_layer_identically(path):
    """A layer of many 64k-multiply-add ranges, so that two threads really share it."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 56, 56, 144)).astype(np.float32)
    wt = rng.standard_normal((3, 3, 144)).astype(np.float32)
    with _path(path):
        one = _run(x, wt, (2, 2), (1, 1), (0, 0, 1, 1), None, ("clip", 0.0, 6.0))
        np.testing.assert_array_equal(_run(x, wt, (2, 2), (1, 1), (0, 0, 1, 1), None, ("clip", 0.0, 6.0), 2), one)
    np.testing.assert_allclose(one, _reference(x, wt, (2, 2), (1, 1), (0, 0, 1, 1), None, ("clip", 0.0, 6.0)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", PATHS[:2])
@pytest.mark.parametrize("kernel, stride", [((3, 3), 1), ((5, 5), 2), ((1, 2), 1)])
@pytest.mark.parametrize("c", [64, 80, 96])
def test_depthwise_any_placement_of_x_in_its_lines(c, kernel, stride, path):
    """x and y at each float of a 64-byte line: a layer whose channels are a multiple of 16 starts with
    a partial vector up to x's next line (AVX2: half-line) boundary."""
    rng = np.random.default_rng(c)
    wt = rng.standard_normal((*kernel, c)).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    geometry = ((stride, stride), (1, 1), (1, 1, 2, 0))
    for offset in range(16):
        x = np.empty(5 * 9 * c + 16, np.float32)[offset:offset + 5 * 9 * c].reshape(1, 5, 9, c)
        x[:] = rng.standard_normal(x.shape)
        want = _reference(x, wt, *geometry, bias, ("relu", 0, 0))
        y = np.full(want.size + 16, np.nan, np.float32)[15 - offset:15 - offset + want.size].reshape(want.shape)
        with _path(path):
            native.depthwise_nhwc(x, y, wt, x.shape, kernel, *geometry, bias, ("relu", 0, 0))
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5, err_msg=f"x {offset} floats into a line")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kernel", ["depthwise_nhwc", "conv_nhwc_out"])
def test_nan_kept_and_infinities(kernel, path):
    """A NaN and both infinities, at a border and inside, through the sums and the clamps."""
    if kernel == "depthwise_nhwc":
        x, wt, run, reference = np.ones((1, 5, 5, 3), np.float32), np.ones((3, 3, 3), np.float32), _run, _reference
        x[0, 2, 2, 0], x[0, 0, 0, 1], x[0, 4, 4, 2] = np.nan, np.inf, -np.inf
    else:
        x, wt = np.ones((1, 3, 6, 6), np.float32), np.ones((16, 3, 3, 3), np.float32)
        run, reference = _stem_run, _stem_reference
        x[0, 0, 2, 2], x[0, 1, 0, 0], x[0, 2, 5, 5] = np.nan, np.inf, -np.inf
    with _path(path):
        for act in [None, ("clip", 0.0, 6.0), ("relu", 0.0, 0.0)]:
            got = run(x, wt, (1, 1), (1, 1), (1, 1, 1, 1), None, act)
            want = reference(x, wt, (1, 1), (1, 1), (1, 1, 1, 1), None, act)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("n, p, c", [(1, 1, 1), (1, 49, 1280), (3, 1, 17), (2, 196, 17), (1, 3136, 96), (4, 7, 33),
                                     (1, 12544, 32), (1, 1100, 20)])  # few units: chunks of the plane on 2 threads
def test_global_average_matches_numpy(n, p, c, path):
    rng = np.random.default_rng(n * p + c)
    x = (rng.standard_normal((n, p, c)) + 3).astype(np.float32)
    y = np.full((n, c), np.nan, np.float32)
    with _path(path):
        native.global_average_nhwc(x, y, x.shape)
        y2 = np.full((n, c), np.nan, np.float32)
        native.global_average_nhwc(x, y2, x.shape, threads=2)
    np.testing.assert_allclose(y, x.astype(np.float64).mean(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(y2, y)


def _ones(*shape):
    return np.ones(shape, np.float32)


GEOMETRY = ((3, 3), (1, 1), (1, 1), (1, 1, 1, 1))


@pytest.mark.parametrize("simd", [True, False])
@pytest.mark.parametrize("call, message", [
    (lambda: native.depthwise_nhwc(_ones(1, 4, 4, 8), _ones(1, 4, 4, 7), _ones(3, 3, 8), (1, 4, 4, 8), *GEOMETRY),
     "y 128"),
    (lambda: native.depthwise_nhwc(_ones(1, 4, 4, 8), _ones(1, 4, 4, 8), _ones(3, 3, 7), (1, 4, 4, 8), *GEOMETRY),
     "weight 72"),
    (lambda: native.depthwise_nhwc(_ones(1, 4, 4, 8), _ones(1, 4, 4, 8), _ones(3, 3, 8), (1, 4, 4, 8), *GEOMETRY,
                                   bias=_ones(7)), "bias 8"),
    (lambda: native.depthwise_nhwc(_ones(1, 4, 4, 8), _ones(1, 4, 4, 8), _ones(3, 3, 8), (1, 4, 5, 8), *GEOMETRY),
     "x must have 160"),
    (lambda: native.depthwise_nhwc(_ones(1, 4, 4, 8), _ones(1, 4, 4, 8), _ones(3, 3, 8), (1, 4, 4, 8), (3, 3), (0, 1),
                                   (1, 1), (1, 1, 1, 1)), "out of bounds"),
    (lambda: native.depthwise_nhwc(_ones(1, 4, 4, 8), _ones(1, 4, 4, 8), _ones(3, 3, 8), (1, 4, 4, 8), (3, 3), (1, 1),
                                   (1, 1), (1, -1, 1, 1)), "out of bounds"),
    (lambda: native.depthwise_nhwc(_ones(1, 4, 4, 8), _ones(1, 4, 4, 8), _ones(9, 3, 8), (1, 4, 4, 8), (9, 3), (1, 1),
                                   (1, 1), (1, 1, 1, 1)), "smaller than the kernel"),
    (lambda: native.depthwise_nhwc(_ones(1, 4, 4, 8), _ones(1, 4, 4, 8), _ones(3, 3, 8), (1, 4, 4, 8), *GEOMETRY,
                                   act=("mish", 0.0, 0.0)), "unknown activation 'mish'"),
    (lambda: native.depthwise_nhwc(_ones(1, 4, 4, 8), _ones(1, 4, 4, 8), _ones(3, 3, 8), (2**62 + 1, 4, 4, 8),
                                   *GEOMETRY), "out of bounds"),
    (lambda: native.depthwise_nhwc(_ones(4), _ones(4), _ones(1), (2**20, 2**20, 2**20, 2**20), (1, 1), (1, 1), (1, 1),
                                   (0, 0, 0, 0)), "overflows"),
    (lambda: native.global_average_nhwc(_ones(2, 3, 4), _ones(2, 3), (2, 3, 4)), "y 8"),
    (lambda: native.global_average_nhwc(_ones(2, 3, 4), _ones(2, 4), (2, 0, 4)), "out of bounds"),
    (lambda: native.global_average_nhwc(_ones(4), _ones(4), (2**20, 2**20, 2**20)), "overflows"),
], ids=["y", "weight", "bias", "shape", "stride 0", "negative pad", "kernel past the input", "activation", "huge batch",
        "huge product", "average y", "average zero pixels", "average huge"])
def test_bad_calls_are_refused(call, message, simd):
    with switched(native.set_nhwc_simd, simd), pytest.raises(ValueError, match=message):
        call()


def test_overlapping_output_is_refused():
    buf = np.ones(2 * 4 * 4 * 8, np.float32)
    x, y = buf[:128], buf[64:192]
    with pytest.raises(ValueError, match="must not overlap"):
        native.depthwise_nhwc(x, y, _ones(3, 3, 8), (1, 4, 4, 8), *GEOMETRY)
    with pytest.raises(ValueError, match="must not overlap"):
        native.global_average_nhwc(buf[:24], buf[20:28], (2, 3, 4))
    with pytest.raises(TypeError, match="expected a contiguous"):
        native.depthwise_nhwc(np.ones((1, 4, 4, 8)), _ones(1, 4, 4, 8), _ones(3, 3, 8), (1, 4, 4, 8), *GEOMETRY)


# --- conv_nhwc_out: NCHW in, NHWC out (stems) ---------------------------------------------------

def _padded_weight(w, groups=1):
    """[C_out, C_in / groups, kh, kw] (ONNX's) as conv_nhwc_out takes it: [groups, kh, kw, C_in / groups,
    C_out / groups rounded up to 16]."""
    per = w.shape[0] // groups
    out = np.zeros((groups, *w.shape[2:], w.shape[1], -(-per // 16) * 16), np.float32)
    for g in range(groups):
        out[g, ..., :per] = w[g * per:(g + 1) * per].transpose(2, 3, 1, 0)
    return out


def _stem_reference(x, w, strides, dilations, pads, bias=None, act=None):
    """A sum over the kernel's taps of each tap's strided view of the zero-padded NCHW input times its
    [C_in, C_out] weights, in float64, laid out NHWC."""
    n, c, h, wd = x.shape
    co, _, kh, kw = w.shape
    (sh, sw), (dh, dw), (top, left, bottom, right) = strides, dilations, pads
    padded = np.zeros((n, c, h + top + bottom, wd + left + right))
    padded[:, :, top:top + h, left:left + wd] = x
    oh, ow = _out_size(h, wd, (kh, kw), strides, dilations, pads)
    y = np.zeros((n, oh, ow, co)) if bias is None else np.broadcast_to(bias.astype(np.float64), (n, oh, ow, co)).copy()
    for i in range(kh):
        for j in range(kw):
            view = padded[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
            y += np.einsum("ncyx,kc->nyxk", view, w[:, :, i, j].astype(np.float64))
    return activation(act, y).astype(np.float32)


def _stem_run(x, w, strides, dilations, pads, bias=None, act=None, threads=1):
    n, c, h, wd = x.shape
    co, _, kh, kw = w.shape
    y = np.full((n, *_out_size(h, wd, (kh, kw), strides, dilations, pads), co), np.nan, np.float32)
    native.conv_nhwc_out(x, y, _padded_weight(w), (n, c, h, wd, co), (kh, kw), strides, dilations, pads, bias, act,
                         threads)
    return y


def _stem_cases():
    """Random geometries (fixed seed) for every C_in and C_out of the brief, output rows of every length
    the register runs split differently; then the stems of MobileNetV2 / EfficientNet and ResNet at a
    smaller plane, and C_out over 64 (two groups of output-channel vectors)."""
    rng = np.random.default_rng(11)
    cases = []
    for c in (1, 3, 4, 17):
        for co in (8, 16, 24, 32, 40, 64):
            k = int(rng.choice([1, 3, 5, 7]))
            n, h, w, s, d, pads = _random_window(rng, k, 20, 40)
            cases.append((n, c, h, w, co, (k, k), (s, s), (d, d), pads))
    cases += [(1, 3, 9, 2 * w, co, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1))
              for co in (16, 24, 32, 40, 64) for w in (1, 2, 3, 6, 13, 16, 29)]
    cases += [(1, 3, 8, 30, 64, (7, 7), (2, 2), (1, 1), (3, 3, 3, 3)),
              (2, 3, 7, 23, 96, (3, 3), (2, 1), (1, 2), (0, 2, 1, 3)),
              (1, 4, 7, 19, 80, (5, 3), (1, 3), (2, 1), (2, 0, 0, 1)),
              (1, 1, 1, 1, 8, (1, 1), (1, 1), (1, 1), (0, 0, 0, 0)),
              (1, 3, 5, 11, 32, (3, 3), (1, 1), (1, 1), (0, 0, 0, 0))]
    return cases


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", _stem_cases(), ids=lambda c: "n{}c{}h{}w{}co{}-k{}s{}d{}-p{}".format(*c))
def test_conv_nhwc_out_matches_numpy(case, path):
    n, c, h, w, co, kernel, strides, dilations, pads = case
    rng = np.random.default_rng(hash(case) % 2**32)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((co, c, *kernel)) / np.sqrt(c * kernel[0] * kernel[1])).astype(np.float32)
    bias = rng.standard_normal(co).astype(np.float32)
    with _path(path):
        for i, act in enumerate(ACTS):
            b = bias if i % 2 else None
            got = _stem_run(x, wt, strides, dilations, pads, b, act)
            np.testing.assert_allclose(got, _stem_reference(x, wt, strides, dilations, pads, b, act), rtol=1e-5,
                                       atol=1e-5, err_msg=str(act))
            np.testing.assert_array_equal(_stem_run(x, wt, strides, dilations, pads, b, act, threads=2), got)


@pytest.mark.parametrize("path", PATHS)
def test_conv_nhwc_out_is_conv_lanes2d_transposed(path):
    """MobileNetV2's stem (3 -> 32, 3x3/2, ReLU6) at 2 x 64 x 64, on two threads sharing many rows:
    the NCHW kernel's output, transposed."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    wt = rng.standard_normal((32, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(32).astype(np.float32)
    geometry = ((3, 3), (2, 2), (1, 1), (0, 0, 1, 1))
    nchw = np.empty((2, 32, 32, 32), np.float32)
    native.conv_lanes2d(x, nchw, wt, x.shape, *geometry, 32, bias, (0.0, 6.0))
    with _path(path):
        y = _stem_run(x, wt, *geometry[1:], bias, ("clip", 0.0, 6.0))
        np.testing.assert_array_equal(_stem_run(x, wt, *geometry[1:], bias, ("clip", 0.0, 6.0), threads=2), y)
    np.testing.assert_allclose(y, nchw.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


def _grouped_cases():
    """Random geometries (fixed seed) of grouped layers: 1-16 input channels a group, 2-40 outputs a group
    (vectors whole, partial, more than one), strides 1-3 (1 and 2 compiled as constants), dilations 1-2."""
    rng = np.random.default_rng(13)
    cases = []
    for groups, per_in, per_out in ((2, 3, 5), (4, 4, 8), (8, 2, 16), (3, 8, 24), (2, 16, 40), (32, 16, 16),
                                    (4, 1, 2), (2, 5, 70)):
        k = int(rng.choice([1, 3, 5]))
        n, h, w, s, d, pads = _random_window(rng, k, 16, 30)
        cases.append((n, h, w, groups, per_in, per_out, (k, k), (s, s), (d, d), pads))
    cases += [(1, 14, 14, 16, 16, 16, (3, 3), (s, s), (1, 1), (1, 1, 1, 1)) for s in (1, 2)]
    # 16+ input channels a group take runs of 8 pixels that read zeros for taps in the padding: rows of
    # 7, 13 and 9 pixels, 1-3 output vectors, strides 1 and 2 (constants) and 3
    cases += [(2, 7, 7, 3, 16, 24, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
              (1, 13, 13, 2, 17, 40, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1)),
              (1, 9, 27, 2, 16, 16, (5, 5), (3, 3), (1, 2), (2, 4, 2, 4))]
    # AVX2's runs (8-channel vectors): 8 pixels at one vector, 6 at two, 4 at three, each with a shorter run
    # for a row's last few pixels (11 = 8 + 3, 14 = 6 + 6 + 2, 5 = 4 + 1); 64 outputs a group: blocks of
    # 3 + 3 + 2 vectors there, one of 4 (no runs) on AVX-512
    cases += [(1, 11, 11, 2, 16, 8, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
              (2, 14, 14, 3, 16, 16, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
              (1, 5, 5, 2, 16, 64, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1))]
    return cases


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", _grouped_cases(), ids=lambda c: "n{}h{}w{}g{}i{}o{}-k{}s{}d{}-p{}".format(*c))
def test_grouped_conv_nhwc_matches_numpy(case, path):
    """conv_nhwc_out on channels-last input with groups: each group's slice of channels convolved as a
    stem's NCHW input would be."""
    n, h, w, groups, per_in, per_out, kernel, strides, dilations, pads = case
    rng = np.random.default_rng(hash(case) % 2**32)
    x = rng.standard_normal((n, h, w, groups * per_in)).astype(np.float32)
    wt = (rng.standard_normal((groups * per_out, per_in, *kernel)) / np.sqrt(per_in * kernel[0] * kernel[1]))
    wt = wt.astype(np.float32)
    bias = rng.standard_normal(groups * per_out).astype(np.float32)
    y = np.empty((n, *_out_size(h, w, kernel, strides, dilations, pads), groups * per_out), np.float32)
    with _path(path):
        for i, act in enumerate(ACTS):
            b = bias if i % 2 else None
            want = np.concatenate([_stem_reference(x[..., g * per_in:(g + 1) * per_in].transpose(0, 3, 1, 2),
                                                   wt[g * per_out:(g + 1) * per_out], strides, dilations, pads,
                                                   None if b is None else b[g * per_out:(g + 1) * per_out], act)
                                   for g in range(groups)], axis=3)
            got = []
            for threads in (1, 2):
                y.fill(np.nan)
                native.conv_nhwc_out(x, y, _padded_weight(wt, groups), (n, groups * per_in, h, w, groups * per_out),
                                     kernel, strides, dilations, pads, b, act, threads, groups=groups,
                                     channels_last=True)
                got.append(y.copy())
            np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5, err_msg=str(act))
            np.testing.assert_array_equal(got[1], got[0])


STEM = ((3, 3), (2, 2), (1, 1), (1, 1, 1, 1))


@pytest.mark.parametrize("simd", [True, False])
@pytest.mark.parametrize("call, message", [
    (lambda: native.conv_nhwc_out(_ones(1, 3, 8, 8), _ones(1, 4, 4, 7), _ones(3, 3, 3, 16), (1, 3, 8, 8, 8), *STEM),
     "y 128"),
    (lambda: native.conv_nhwc_out(_ones(1, 3, 8, 8), _ones(1, 4, 4, 8), _ones(3, 3, 3, 8), (1, 3, 8, 8, 8), *STEM),
     "weight 432"),
    (lambda: native.conv_nhwc_out(_ones(1, 3, 8, 8), _ones(1, 4, 4, 8), _ones(3, 3, 3, 16), (1, 3, 8, 8, 8), *STEM,
                                  bias=_ones(16)), "bias 8"),
    (lambda: native.conv_nhwc_out(_ones(1, 3, 8, 8), _ones(1, 4, 4, 8), _ones(3, 3, 3, 16), (1, 4, 8, 8, 8), *STEM),
     "x must have 256"),
    (lambda: native.conv_nhwc_out(_ones(1, 3, 8, 8), _ones(1, 4, 4, 8), _ones(3, 3, 3, 16), (1, 3, 8, 8, 0), *STEM),
     "out of bounds"),
    (lambda: native.conv_nhwc_out(_ones(1, 3, 8, 8), _ones(1, 4, 4, 8), _ones(3, 3, 3, 16), (1, 3, 8, 8, 8), (3, 3),
                                  (2, 2), (0, 1), (1, 1, 1, 1)), "out of bounds"),
    (lambda: native.conv_nhwc_out(_ones(1, 3, 8, 8), _ones(1, 4, 4, 8), _ones(3, 3, 3, 16), (1, 3, 8, 8, 8), (3, 3),
                                  (2, 2), (1, 1), (1, 1, -1, 1)), "out of bounds"),
    (lambda: native.conv_nhwc_out(_ones(1, 3, 8, 8), _ones(1, 4, 4, 8), _ones(11, 3, 3, 16), (1, 3, 8, 8, 8), (11, 3),
                                  (2, 2), (1, 1), (1, 1, 1, 1)), "smaller than the kernel"),
    (lambda: native.conv_nhwc_out(_ones(1, 3, 8, 8), _ones(1, 4, 4, 8), _ones(3, 3, 3, 16), (1, 3, 8, 8, 8), *STEM,
                                  act=("mish", 0.0, 0.0)), "unknown activation 'mish'"),
    (lambda: native.conv_nhwc_out(_ones(1, 3, 8, 8), _ones(1, 4, 4, 8), _ones(3, 3, 3, 16), (2**62 + 1, 3, 8, 8, 8),
                                  *STEM), "out of bounds"),
    (lambda: native.conv_nhwc_out(_ones(4), _ones(4), _ones(16), (2**20, 2**20, 2**20, 2**20, 1), (1, 1), (1, 1),
                                  (1, 1), (0, 0, 0, 0)), "overflows"),
    (lambda: native.conv_nhwc_out(_ones(1, 3, 8, 8), _ones(1, 4, 4, 8), _ones(3, 3, 3, 16), (1, 3, 8, 8, 8), *STEM,
                                  groups=2), "groups=2 must divide C_in=3"),
    (lambda: native.conv_nhwc_out(_ones(1, 4, 8, 8), _ones(1, 4, 4, 6), _ones(4, 3, 3, 1, 16), (1, 4, 8, 8, 6), *STEM,
                                  groups=4), "groups=4 must divide C_in=4 and C_out=6"),
    (lambda: native.conv_nhwc_out(_ones(1, 4, 8, 8), _ones(1, 4, 4, 8), _ones(3, 3, 4, 16), (1, 4, 8, 8, 8), *STEM,
                                  groups=0), "groups=0"),
], ids=["y", "weight not padded to 16", "bias", "shape", "no output channels", "dilation 0", "negative pad",
        "kernel past the input", "activation", "huge batch", "huge product", "groups of C_in", "groups of C_out",
        "no groups"])
def test_conv_nhwc_out_bad_calls_are_refused(call, message, simd):
    with switched(native.set_nhwc_simd, simd), pytest.raises(ValueError, match=message):
        call()


def test_conv_nhwc_out_refuses_overlap_and_other_dtypes():
    buf = np.ones(3 * 8 * 8 + 128, np.float32)
    with pytest.raises(ValueError, match="must not overlap"):
        native.conv_nhwc_out(buf[:192], buf[150:278], _ones(3, 3, 3, 16), (1, 3, 8, 8, 8), *STEM)
    with pytest.raises(TypeError, match="expected a contiguous"):
        native.conv_nhwc_out(np.ones((1, 3, 8, 8)), _ones(1, 4, 4, 8), _ones(3, 3, 3, 16), (1, 3, 8, 8, 8), *STEM)
    with pytest.raises(TypeError, match="bytes-like"):
        native.conv_nhwc_out(_ones(1, 3, 8, 8), None, _ones(3, 3, 3, 16), (1, 3, 8, 8, 8), *STEM)
